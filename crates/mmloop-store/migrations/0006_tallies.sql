-- The stats page's counts are kept as they change instead of scanned on every request (a scan
-- of a 1M-item queue and its labels took over a second): one row per combination of the keys
-- the page groups by, moved by triggers in the same transaction as the change.

-- The primary candidate's confidence decile, 0..9; -1 when unknown.
ALTER TABLE review_queue ADD COLUMN bucket INTEGER
    GENERATED ALWAYS AS (CASE WHEN conf IS NULL THEN -1 ELSE MAX(MIN(CAST(conf * 10 AS INTEGER), 9), 0) END) VIRTUAL;

CREATE TABLE queue_tally (
    status   TEXT NOT NULL,
    has_cand INTEGER NOT NULL,          -- 0/1
    bucket   INTEGER NOT NULL,
    flags    TEXT NOT NULL,             -- ',flag,flag,' or ''
    n        INTEGER NOT NULL,
    PRIMARY KEY (status, has_cand, bucket, flags)
) WITHOUT ROWID;

INSERT INTO queue_tally (status, has_cand, bucket, flags, n)
SELECT status, COALESCE(has_cand, 0), bucket, COALESCE(flags, ''), COUNT(*) FROM review_queue GROUP BY 1, 2, 3, 4;

-- Set while a bulk change keeps the tally itself (an import's items joining the queue): one
-- GROUP BY over a million new rows instead of a million single-row updates.
CREATE TABLE tally_paused (one INTEGER PRIMARY KEY CHECK (one = 1));

CREATE TRIGGER queue_tally_insert AFTER INSERT ON review_queue
WHEN NOT EXISTS (SELECT 1 FROM tally_paused)
BEGIN
    INSERT INTO queue_tally (status, has_cand, bucket, flags, n)
    VALUES (NEW.status, COALESCE(NEW.has_cand, 0), NEW.bucket, COALESCE(NEW.flags, ''), 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER queue_tally_delete AFTER DELETE ON review_queue BEGIN
    UPDATE queue_tally SET n = n - 1
    WHERE status = OLD.status AND has_cand = COALESCE(OLD.has_cand, 0) AND bucket = OLD.bucket
      AND flags = COALESCE(OLD.flags, '');
END;

CREATE TRIGGER queue_tally_update AFTER UPDATE OF status, has_cand, conf, flags ON review_queue
WHEN (OLD.status IS NOT NEW.status OR OLD.has_cand IS NOT NEW.has_cand OR OLD.bucket IS NOT NEW.bucket
      OR OLD.flags IS NOT NEW.flags)
     AND NOT EXISTS (SELECT 1 FROM tally_paused)
BEGIN
    UPDATE queue_tally SET n = n - 1
    WHERE status = OLD.status AND has_cand = COALESCE(OLD.has_cand, 0) AND bucket = OLD.bucket
      AND flags = COALESCE(OLD.flags, '');
    INSERT INTO queue_tally (status, has_cand, bucket, flags, n)
    VALUES (NEW.status, COALESCE(NEW.has_cand, 0), NEW.bucket, COALESCE(NEW.flags, ''), 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

-- Each person's decisions by kind, with their lead times and first and last moments. Labels are
-- only ever appended.
CREATE TABLE reviewer_tally (
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,             -- accept | edit | reject | skip | undo
    n        INTEGER NOT NULL,
    lead_sum INTEGER NOT NULL,          -- sum of the lead times given, ms
    lead_n   INTEGER NOT NULL,          -- how many decisions gave one
    first_at TEXT NOT NULL,
    last_at  TEXT NOT NULL,
    PRIMARY KEY (actor, action)
) WITHOUT ROWID;

INSERT INTO reviewer_tally (actor, action, n, lead_sum, lead_n, first_at, last_at)
SELECT actor, action, COUNT(*), COALESCE(SUM(lead_time_ms), 0), COUNT(lead_time_ms), MIN(at), MAX(at)
FROM labels WHERE action IN ('accept', 'edit', 'reject', 'skip', 'undo') GROUP BY actor, action;

CREATE TRIGGER reviewer_tally_label AFTER INSERT ON labels
WHEN NEW.action IN ('accept', 'edit', 'reject', 'skip', 'undo')
BEGIN
    INSERT INTO reviewer_tally (actor, action, n, lead_sum, lead_n, first_at, last_at)
    VALUES (NEW.actor, NEW.action, 1, COALESCE(NEW.lead_time_ms, 0), NEW.lead_time_ms IS NOT NULL, NEW.at, NEW.at)
    ON CONFLICT DO UPDATE SET n = n + 1, lead_sum = lead_sum + excluded.lead_sum, lead_n = lead_n + excluded.lead_n,
                              first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at);
END;

-- The last hour's decisions, read without scanning every label; imported labels stay out of it.
CREATE INDEX labels_decided ON labels(action, at) WHERE action IN ('accept', 'edit', 'reject', 'skip');
