-- Risk flags get a table of their own instead of a JSON list on the candidate: one row per
-- flag, in the order the rules raised it. The review queue reads a candidate's flags through
-- one view, `primary_candidate`, instead of unpacking JSON in every trigger.

CREATE TABLE candidate_flags (
    candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
    pos          INTEGER NOT NULL,      -- order among the candidate's flags
    flag         TEXT NOT NULL,         -- the rule: hedge, refusal, empty, ...
    why          TEXT NOT NULL DEFAULT '',
    span_start   INTEGER,               -- characters [span_start, span_end) of the answer
    span_end     INTEGER,
    PRIMARY KEY (candidate_id, pos),
    CHECK ((span_start IS NULL) = (span_end IS NULL) AND (span_start IS NULL OR 0 <= span_start AND span_start <= span_end))
) WITHOUT ROWID;
CREATE INDEX candidate_flags_flag ON candidate_flags(flag);

-- The stored lists move over as leniently as the review queue used to read them: objects with
-- a string `flag` and bare names; a span is kept only when it is two ordered whole numbers.
INSERT INTO candidate_flags (candidate_id, pos, flag, why, span_start, span_end)
SELECT id, pos, flag, why,
       CASE WHEN shaped AND 0 <= s0 AND s0 <= s1 THEN s0 END,
       CASE WHEN shaped AND 0 <= s0 AND s0 <= s1 THEN s1 END
FROM (SELECT c.id, f.key AS pos,
             CASE f.type WHEN 'text' THEN f.value WHEN 'object' THEN json_extract(f.value, '$.flag') END AS flag,
             CASE WHEN f.type = 'object' THEN json_type(f.value, '$.flag') = 'text' ELSE f.type = 'text' END AS named,
             CASE WHEN f.type = 'object' AND json_type(f.value, '$.why') = 'text'
                  THEN json_extract(f.value, '$.why') ELSE '' END AS why,
             CASE WHEN f.type = 'object' THEN json_type(f.value, '$.span') = 'array'
                       AND json_array_length(f.value, '$.span') = 2
                       AND json_type(f.value, '$.span[0]') = 'integer'
                       AND json_type(f.value, '$.span[1]') = 'integer'
                  ELSE 0 END AS shaped,
             CASE WHEN f.type = 'object' THEN json_extract(f.value, '$.span[0]') END AS s0,
             CASE WHEN f.type = 'object' THEN json_extract(f.value, '$.span[1]') END AS s1
      FROM candidates c,
           json_each(CASE WHEN json_valid(c.flags) THEN CASE json_type(c.flags) WHEN 'array' THEN c.flags END END) f)
WHERE named;

DROP TRIGGER review_queue_candidate_insert;
DROP TRIGGER review_queue_candidate_update;
DROP TRIGGER review_queue_candidate_delete;
ALTER TABLE candidates DROP COLUMN flags;

-- The candidate the review queue ranks an item by: its newest one without an error (else its
-- newest), with its flags counted and listed as ',flag,flag,' for filtering.
CREATE VIEW primary_candidate AS
SELECT c.item_id,
       c.id AS candidate_id,
       CASE WHEN c.error IS NULL THEN c.confidence END AS conf,
       (SELECT count(*) FROM candidate_flags f WHERE f.candidate_id = c.id) AS nflags,
       -- (ordered in a subquery: group_concat's own ORDER BY needs SQLite 3.44, and the schema
       -- must stay readable by the sqlite3 shells people inspect a project with)
       (SELECT ',' || group_concat(flag, ',') || ','
        FROM (SELECT f.flag FROM candidate_flags f WHERE f.candidate_id = c.id ORDER BY f.pos)) AS flags,
       c.model
FROM candidates c
WHERE c.id = (SELECT p.id FROM candidates p WHERE p.item_id = c.item_id ORDER BY p.error IS NULL DESC, p.id DESC LIMIT 1);

CREATE TRIGGER review_queue_candidate_insert AFTER INSERT ON candidates BEGIN
    UPDATE review_queue SET (has_cand, conf, nflags, flags, model) =
        (SELECT 1, p.conf, p.nflags, p.flags, p.model FROM primary_candidate p WHERE p.item_id = NEW.item_id)
    WHERE item_id = NEW.item_id;
END;

CREATE TRIGGER review_queue_candidate_update AFTER UPDATE ON candidates BEGIN
    UPDATE review_queue SET (has_cand, conf, nflags, flags, model) =
        (SELECT 1, p.conf, p.nflags, p.flags, p.model FROM primary_candidate p WHERE p.item_id = NEW.item_id)
    WHERE item_id = NEW.item_id;
END;

CREATE TRIGGER review_queue_candidate_delete AFTER DELETE ON candidates BEGIN
    UPDATE review_queue SET (has_cand, conf, nflags, flags, model) =
        (SELECT 1, p.conf, p.nflags, p.flags, p.model FROM primary_candidate p WHERE p.item_id = OLD.item_id)
    WHERE item_id = OLD.item_id;
END;

-- Flags are written right after their candidate, in the same transaction.
CREATE TRIGGER review_queue_candidate_flag AFTER INSERT ON candidate_flags BEGIN
    UPDATE review_queue SET (nflags, flags) =
        (SELECT p.nflags, p.flags FROM primary_candidate p WHERE p.item_id = review_queue.item_id)
    WHERE item_id = (SELECT item_id FROM candidates WHERE id = NEW.candidate_id);
END;

-- Imports now add their items to the review queue in their own transaction; items an older
-- version imported after the queue last looked join it here, once, and every ranked item is
-- ranked again from the flags as they now stand.
INSERT INTO review_queue (item_id, status, label_id)
SELECT i.id, COALESCE(l.status, 'pending'), i.label_id
FROM items i LEFT JOIN labels l ON l.id = i.label_id
WHERE i.id > (SELECT COALESCE(MAX(item_id), 0) FROM review_queue);

UPDATE review_queue SET (has_cand, conf, nflags, flags, model) =
    (SELECT 1, p.conf, p.nflags, p.flags, p.model FROM primary_candidate p WHERE p.item_id = review_queue.item_id)
WHERE item_id IN (SELECT item_id FROM candidates);
