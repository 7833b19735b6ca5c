-- mmloop project store, schema 1.
-- Items are immutable once imported, except their split; labels are append-only (each
-- save is a new row, the item points at its current one); versions are manifests of
-- (item, label, split) in content-addressed pages; events form a hash chain.

CREATE TABLE project (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE images (
    id     INTEGER PRIMARY KEY,
    sha256 BLOB NOT NULL UNIQUE,
    -- Absolute path of the file in place, or a path under .mmloop/ when copied.
    path   TEXT NOT NULL,
    copied INTEGER NOT NULL DEFAULT 0,
    width  INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    bytes  INTEGER NOT NULL
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,             -- import | infer | train | eval
    actor       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,             -- running | done | failed
    config      TEXT NOT NULL,             -- JSON
    summary     TEXT,                      -- JSON
    version     TEXT                       -- version id read, when any
);

CREATE TABLE items (
    id           INTEGER PRIMARY KEY,
    -- Dedup key: 'id:<format>:<source id>' or 'sha:<content digest>'.
    key          TEXT NOT NULL UNIQUE,
    source_id    TEXT,
    task         TEXT NOT NULL,
    question     TEXT NOT NULL,
    context      TEXT,                     -- JSON messages before this turn
    conversation TEXT,
    turn         INTEGER NOT NULL DEFAULT 0,
    tags         TEXT,                     -- JSON array
    meta         TEXT,                     -- canonical JSON object
    source_file  TEXT,
    source_line  INTEGER,
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    content      BLOB NOT NULL,            -- item digest
    split        TEXT,
    label_id     INTEGER                   -- current label; NULL = pending, no answer
);
CREATE INDEX items_split ON items(split);
CREATE INDEX items_label ON items(label_id);

CREATE TABLE item_images (
    item_id  INTEGER NOT NULL,
    pos      INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    PRIMARY KEY (item_id, pos)
) WITHOUT ROWID;
CREATE INDEX item_images_image ON item_images(image_id);

CREATE TABLE labels (
    id           INTEGER PRIMARY KEY,
    item_id      INTEGER NOT NULL,
    prev_id      INTEGER,                  -- the label this one replaced
    status       TEXT NOT NULL,
    answer       TEXT,
    answers      TEXT,                     -- JSON [{answer, confidence}]
    actor        TEXT NOT NULL,
    at           TEXT NOT NULL,
    action       TEXT NOT NULL,            -- import | accept | edit | reject | skip | undo | ...
    lead_time_ms INTEGER,
    content      BLOB NOT NULL             -- label digest
);
CREATE INDEX labels_item ON labels(item_id);

CREATE TABLE candidates (
    id                INTEGER PRIMARY KEY,
    item_id           INTEGER NOT NULL,
    run_id            INTEGER,
    model             TEXT NOT NULL,
    params_hash       BLOB,                -- model + prompt + generation params
    answer            TEXT,
    confidence        REAL,
    confidence_detail TEXT,                -- JSON
    flags             TEXT,                -- JSON [{flag, why}]
    logprobs          TEXT,                -- JSON, OpenAI shape
    error             TEXT,
    created_at        TEXT NOT NULL
);
CREATE INDEX candidates_item ON candidates(item_id);
CREATE INDEX candidates_params ON candidates(params_hash, item_id);

CREATE TABLE versions (
    seq        INTEGER PRIMARY KEY,        -- v1, v2, ...
    id         BLOB NOT NULL,              -- content digest
    parent     INTEGER,
    message    TEXT NOT NULL,
    author     TEXT NOT NULL,
    at         TEXT NOT NULL,
    items      INTEGER NOT NULL,
    pages      BLOB NOT NULL,              -- concatenated 32-byte page digests
    stats      TEXT NOT NULL,              -- JSON counts by split and status
    audit_seq  INTEGER NOT NULL,
    audit_hash BLOB NOT NULL
);
CREATE INDEX versions_id ON versions(id);

CREATE TABLE pages (
    hash BLOB PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    entity    TEXT NOT NULL,
    before    TEXT,
    after     TEXT,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
