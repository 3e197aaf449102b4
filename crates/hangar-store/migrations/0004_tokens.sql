-- Scoped tokens. kind is admin | org | deploy | readonly:
--   admin: org_id and app NULL;
--   org: org_id set, app NULL;
--   deploy: org_id and app set;
--   readonly: org_id set, app set when it is scoped to one app.
-- expires_at NULL means the token never expires; revoked tokens are kept (revoked_at set)
-- so that `hangar tokens list` and audits can still name them.
ALTER TABLE tokens ADD COLUMN org_id INTEGER REFERENCES orgs(id);
ALTER TABLE tokens ADD COLUMN app TEXT;
ALTER TABLE tokens ADD COLUMN expires_at TEXT;
ALTER TABLE tokens ADD COLUMN revoked_at TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at TEXT;
ALTER TABLE tokens ADD COLUMN created_by INTEGER;
CREATE INDEX tokens_org ON tokens(org_id);
CREATE INDEX tokens_app ON tokens(app);
