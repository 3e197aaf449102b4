-- Releases: immutable, numbered per app. `config` is the app config as given (JSON of the
-- model), `resolved` the per-group machine configs the deploy engine created machines from.
CREATE TABLE releases (
    app             TEXT NOT NULL,
    version         INTEGER NOT NULL,
    image           TEXT NOT NULL,
    image_digest    TEXT NOT NULL,
    config          TEXT NOT NULL,
    resolved        TEXT NOT NULL,
    secrets_digest  TEXT,
    strategy        TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (app, version)
);

-- Deploys: the durable state machine that brings an app's machines to a release.
-- At most one runs per app (the partial unique index), so deploys never interleave.
CREATE TABLE deploys (
    id          TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    release     INTEGER NOT NULL,
    previous    INTEGER,
    strategy    TEXT NOT NULL,
    counts      TEXT NOT NULL,
    status      TEXT NOT NULL,
    phase       TEXT NOT NULL,
    reason      TEXT,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX deploys_app ON deploys(app, created_at);
CREATE UNIQUE INDEX deploys_one_active ON deploys(app) WHERE status IN ('running', 'rolling_back');

-- Progress of a deploy, streamed to `hangar deploy` and kept for `--wait` reattaching.
CREATE TABLE deploy_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    deploy_id   TEXT NOT NULL REFERENCES deploys(id),
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    machine_id  TEXT
);
CREATE INDEX deploy_events_deploy ON deploy_events(deploy_id, seq);
