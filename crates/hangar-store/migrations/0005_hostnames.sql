-- Custom hostnames: a host name the edge proxy routes to an app besides <app>.<domain>.
-- The name is the primary key, so one host name reaches exactly one app.
CREATE TABLE app_hostnames (
    hostname    TEXT PRIMARY KEY,
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    created_at  TEXT NOT NULL
);
CREATE INDEX app_hostnames_app ON app_hostnames(app);
