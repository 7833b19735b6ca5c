-- mmloop project store, schema 2: review in the browser.
-- Accounts (argon2id password hashes; sessions and API tokens stored only as sha256 of
-- the secret), leases that keep two reviewers off the same item, and the review queue: one
-- row per item with the keys the risk order needs, kept current by triggers on `items`
-- and `candidates` so whoever writes candidates (the engine, an import) needs to know
-- nothing about it. New items join the queue when the store next looks (see review.rs).

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,           -- admin | reviewer | annotator | viewer
    password_hash TEXT,                    -- argon2id PHC string; NULL: no password login
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    created_by    TEXT NOT NULL
);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,           -- sha256 of the cookie value, never the value
    user_id    INTEGER NOT NULL REFERENCES users(id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,       -- sha256 of the token, never the token
    prefix     TEXT NOT NULL,              -- its first characters, to recognise it in lists
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    expires_ms INTEGER,                    -- NULL: never
    revoked_at TEXT
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

-- An item handed to a reviewer. A lease past `until_ms` is free again: nothing has to
-- clean it up, so leases survive restarts and expire the same way after one.
CREATE TABLE leases (
    item_id    INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    until_ms   INTEGER NOT NULL,
    granted_ms INTEGER NOT NULL
);
CREATE INDEX leases_user ON leases(user_id);

CREATE TABLE review_queue (
    item_id  INTEGER PRIMARY KEY,
    status   TEXT NOT NULL,                -- the current label's status; pending when none
    label_id INTEGER,
    has_cand INTEGER,                      -- 1 when the item has a model candidate
    conf     REAL,                         -- the primary candidate's confidence (NULL: unknown or failed)
    nflags   INTEGER,                      -- how many risk flags it raised
    flags    TEXT,                         -- ',flag,flag,' for filtering
    model    TEXT,
    -- 1: nobody in this project has decided on it yet (the default queue).
    need     INTEGER GENERATED ALWAYS AS (status IN ('pending', 'imported')) VIRTUAL,
    -- Candidates first (riskiest first within), then unanswered items, then imported answers.
    tier     INTEGER GENERATED ALWAYS AS (CASE WHEN has_cand = 1 THEN 0 WHEN status = 'pending' THEN 1 ELSE 2 END) VIRTUAL
);
-- The risk order of the open queue: scanning it from the start, skipping leased rows,
-- finds the next item in O(leases) whatever the project's size.
CREATE INDEX review_queue_open ON review_queue(tier, conf, nflags DESC, item_id) WHERE need = 1;
-- Decided items, oldest decision first, for re-review queues (skipped, rejected, ...).
CREATE INDEX review_queue_decided ON review_queue(status, label_id) WHERE need = 0;

-- A label save moves items.label_id: the queue follows.
CREATE TRIGGER review_queue_label AFTER UPDATE OF label_id ON items BEGIN
    UPDATE review_queue
    SET label_id = NEW.label_id,
        status = COALESCE((SELECT status FROM labels WHERE id = NEW.label_id), 'pending')
    WHERE item_id = NEW.id;
END;

-- The primary candidate of an item is its newest one without an error (else its newest).
CREATE TRIGGER review_queue_candidate_insert AFTER INSERT ON candidates BEGIN
    UPDATE review_queue SET (has_cand, conf, nflags, flags, model) = (
        SELECT 1,
               CASE WHEN c.error IS NULL THEN c.confidence END,
               CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array' THEN json_array_length(c.flags) ELSE 0 END,
               CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array'
                    THEN ',' || (SELECT group_concat(CASE f.type WHEN 'object' THEN json_extract(f.value, '$.flag') WHEN 'text' THEN f.value END, ',') FROM json_each(c.flags) f) || ','
               END,
               c.model
        FROM candidates c WHERE c.item_id = NEW.item_id
        ORDER BY c.error IS NULL DESC, c.id DESC LIMIT 1)
    WHERE item_id = NEW.item_id;
END;

CREATE TRIGGER review_queue_candidate_update AFTER UPDATE ON candidates BEGIN
    UPDATE review_queue SET (has_cand, conf, nflags, flags, model) = (
        SELECT 1,
               CASE WHEN c.error IS NULL THEN c.confidence END,
               CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array' THEN json_array_length(c.flags) ELSE 0 END,
               CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array'
                    THEN ',' || (SELECT group_concat(CASE f.type WHEN 'object' THEN json_extract(f.value, '$.flag') WHEN 'text' THEN f.value END, ',') FROM json_each(c.flags) f) || ','
               END,
               c.model
        FROM candidates c WHERE c.item_id = NEW.item_id
        ORDER BY c.error IS NULL DESC, c.id DESC LIMIT 1)
    WHERE item_id = NEW.item_id;
END;

CREATE TRIGGER review_queue_candidate_delete AFTER DELETE ON candidates BEGIN
    UPDATE review_queue SET (has_cand, conf, nflags, flags, model) = (
        SELECT 1,
               CASE WHEN c.error IS NULL THEN c.confidence END,
               CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array' THEN json_array_length(c.flags) ELSE 0 END,
               CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array'
                    THEN ',' || (SELECT group_concat(CASE f.type WHEN 'object' THEN json_extract(f.value, '$.flag') WHEN 'text' THEN f.value END, ',') FROM json_each(c.flags) f) || ','
               END,
               c.model
        FROM candidates c WHERE c.item_id = OLD.item_id
        ORDER BY c.error IS NULL DESC, c.id DESC LIMIT 1)
    WHERE item_id = OLD.item_id;
END;

-- Items already in the project join the queue now; later ones when the store next looks.
INSERT INTO review_queue (item_id, status, label_id)
SELECT i.id, COALESCE(l.status, 'pending'), i.label_id
FROM items i LEFT JOIN labels l ON l.id = i.label_id;

UPDATE review_queue SET (has_cand, conf, nflags, flags, model) = (
    SELECT 1,
           CASE WHEN c.error IS NULL THEN c.confidence END,
           CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array' THEN json_array_length(c.flags) ELSE 0 END,
           CASE WHEN json_valid(c.flags) AND json_type(c.flags) = 'array'
                THEN ',' || (SELECT group_concat(CASE f.type WHEN 'object' THEN json_extract(f.value, '$.flag') WHEN 'text' THEN f.value END, ',') FROM json_each(c.flags) f) || ','
           END,
           c.model
    FROM candidates c WHERE c.item_id = review_queue.item_id
    ORDER BY c.error IS NULL DESC, c.id DESC LIMIT 1)
WHERE item_id IN (SELECT item_id FROM candidates);
