-- App secrets, encrypted at rest (see docs/secrets.md).
--
-- Each app has one data key (32 random bytes), stored only wrapped: encrypted with
-- XChaCha20-Poly1305 under the server's master key, whose id (a digest of the key, never
-- the key) is kept next to it so a half-finished rotation is detected at start.
CREATE TABLE app_keys (
    app             TEXT PRIMARY KEY,
    wrapped_key     BLOB NOT NULL,
    master_key_id   TEXT NOT NULL,
    -- Bumped by every change to the app's secrets (Fly's secrets version).
    secrets_version INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL
);

-- One row per secret: the value encrypted under the app's data key (the app and the
-- secret's name are the associated data), and a keyed digest of the value for display.
CREATE TABLE secrets (
    app         TEXT NOT NULL,
    name        TEXT NOT NULL,
    ciphertext  BLOB NOT NULL,
    nonce       BLOB NOT NULL,
    digest      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (app, name)
);
