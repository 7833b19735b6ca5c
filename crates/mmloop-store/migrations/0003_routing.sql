-- mmloop project store, schema 3: routing with a guarantee.
-- An audit sample is a set of items drawn uniformly at random and decided by people as
-- usual; the review queue serves an open sample's items first, in the sample's random
-- order, without the model's confidence. `calibration` samples are drawn from pending
-- pre-annotated items and certify a threshold (`mmloop route`); `drift` samples are drawn
-- from the items a route run auto-accepted and measure the error they really have.

CREATE TABLE audit_samples (
    id            INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL,           -- calibration | drift
    route_run     INTEGER,                 -- drift: the route run whose items it audits
    task          TEXT,                    -- the task drawn from; NULL: every task
    seed          INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    pool          INTEGER NOT NULL,        -- items it was drawn from
    max_candidate INTEGER NOT NULL,        -- newest candidate id when drawn: the pool's answers
    created_at    TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    closed_at     TEXT
);

CREATE TABLE audit_items (
    sample_id    INTEGER NOT NULL,
    pos          INTEGER NOT NULL,         -- the random order reviewers get them in
    item_id      INTEGER NOT NULL,
    candidate_id INTEGER NOT NULL,         -- the model answer audited
    base_label   INTEGER,                  -- the item's label when drawn; a newer one is the decision
    PRIMARY KEY (sample_id, pos)
) WITHOUT ROWID;
CREATE INDEX audit_items_item ON audit_items(item_id);
