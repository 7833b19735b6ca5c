-- mmloop project store, schema 4: online A/B experiments of `mmloop serve`.
-- An experiment splits requests between arms (the base model, its adapters) by a sticky hash
-- of the user; each answered request is an exposure, and clients report how its answer fared
-- (an outcome). Both are audited.

CREATE TABLE ab_experiments (
    name        TEXT PRIMARY KEY,
    seed        TEXT NOT NULL,             -- the assignment hash's salt
    arms        TEXT NOT NULL,             -- JSON: [{"name", "model"}], in order
    weights     TEXT NOT NULL,             -- JSON: [w, ...], summing to 1
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE ab_exposures (
    id                INTEGER PRIMARY KEY,
    experiment        TEXT NOT NULL REFERENCES ab_experiments(name),
    request_id        TEXT NOT NULL UNIQUE,
    user_id           TEXT,                -- NULL: assigned per request
    arm               TEXT NOT NULL,
    latency_ms        REAL NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    confidence        REAL,
    created_at        TEXT NOT NULL
);
CREATE INDEX ab_exposures_by_experiment ON ab_exposures (experiment, arm);

CREATE TABLE ab_outcomes (
    id          INTEGER PRIMARY KEY,
    request_id  TEXT NOT NULL REFERENCES ab_exposures(request_id),
    outcome     TEXT NOT NULL,             -- accept | edit | reject | thumbs_up | thumbs_down | value
    value       REAL NOT NULL,             -- in [0, 1]: 1 accept / thumbs up, 0 edit / reject / thumbs down
    created_at  TEXT NOT NULL,
    actor       TEXT NOT NULL
);
CREATE INDEX ab_outcomes_by_request ON ab_outcomes (request_id);
