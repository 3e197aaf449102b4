-- Organizations: tenants. net_index picks the organization's bridge and address blocks.
CREATE TABLE orgs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    slug        TEXT NOT NULL UNIQUE,
    net_index   INTEGER NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE apps (
    name        TEXT PRIMARY KEY,
    org_id      INTEGER NOT NULL REFERENCES orgs(id),
    created_at  TEXT NOT NULL
);

-- Machines are kept after destruction (state 'destroyed') so that `include_deleted` and events work.
CREATE TABLE machines (
    id              TEXT PRIMARY KEY,
    app             TEXT NOT NULL,
    name            TEXT NOT NULL,
    state           TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    config          TEXT NOT NULL,
    image_ref       TEXT,
    ipv4            TEXT,
    ipv6            TEXT,
    org_id          INTEGER NOT NULL REFERENCES orgs(id),
    restart_count   INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX machines_app ON machines(app);
CREATE UNIQUE INDEX machines_live_name ON machines(app, name) WHERE state != 'destroyed';
CREATE UNIQUE INDEX machines_live_ipv4 ON machines(org_id, ipv4) WHERE state != 'destroyed';
CREATE UNIQUE INDEX machines_live_ipv6 ON machines(org_id, ipv6) WHERE state != 'destroyed';

CREATE TABLE machine_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    machine_id  TEXT NOT NULL REFERENCES machines(id),
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    source      TEXT NOT NULL,
    timestamp   INTEGER NOT NULL,
    request     TEXT
);
CREATE INDEX machine_events_machine ON machine_events(machine_id, seq);

-- API tokens: only the SHA-256 digest is stored.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    digest      TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
