//! App secrets: encrypted at rest, write-only, decrypted only to build a machine's
//! environment at start (`docs/secrets.md`, `docs/security.md`).
//!
//! Keys: a 32-byte master key in a file (`<data-dir>/master.key`, 0600, or
//! `HANGAR_MASTER_KEY_FILE`); per app a random 32-byte data key, stored only wrapped
//! (XChaCha20-Poly1305 under the master key, the app's name as associated data); each
//! secret value encrypted under its app's data key with the app and the secret's name as
//! associated data, so a ciphertext cannot be moved to another app or name. The digest
//! shown by `secrets list` is an HMAC-SHA256 under a key derived from the data key, so it
//! cannot be used to guess short values offline.
//!
//! **Invariant:** a secret value is never written anywhere in clear text by the server:
//! not to the store, the logs, events, release records, error messages or API responses.
//! [`SecretValue`] redacts itself in `Debug` and `Display`.
//!
//! **Invariant:** every stored data key is wrapped by the master key in the key file; a
//! rotation writes `<key file>.new` first, re-wraps every data key in one transaction, then
//! renames the new file over the old one. A crash in between is finished (or undone) at
//! the next start by [`Keyring::load`], which looks at which key the store's data keys use.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hangar_core::names::validate_env_name;
use hangar_store::{SecretChange, Store, StoreError};
use hmac::Mac;
use serde::Serialize;
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

/// The largest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Name prefixes the platform sets itself; a secret may not shadow them.
const RESERVED_PREFIXES: &[&str] = &["FLY_", "HANGAR_"];

/// Names the platform uses for itself.
const RESERVED_NAMES: &[&str] = &["RELEASE_COMMAND"];

/// Length of keys and nonces.
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

type HmacSha256 = hmac::Hmac<sha2_v11::Sha256>;

/// A secret value. Its `Debug` and `Display` print `[redacted]`, and its memory is wiped
/// when dropped, so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: String) -> SecretValue {
        SecretValue(Zeroizing::new(value))
    }

    /// The value itself: only for encrypting it and for a machine's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What can go wrong with secrets and their keys. No message ever contains a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The name is not an environment variable name.
    #[error("invalid secret name {name:?}: use letters, digits and '_', not starting with a digit")]
    InvalidName {
        /// The refused name.
        name: String,
    },
    /// The name is one the platform sets.
    #[error(
        "secret name {name} is reserved: names starting with FLY_ or HANGAR_ and RELEASE_COMMAND are set by the platform; pick another name"
    )]
    Reserved {
        /// The refused name.
        name: String,
    },
    /// The value is too long.
    #[error("the value of {name} is {len} bytes; at most {MAX_SECRET_BYTES}")]
    TooLarge {
        /// The secret's name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The secret does not exist.
    #[error("secret {name} of app {app} not found: list them with `hangar secrets list -a {app}`")]
    NotFound {
        /// The app.
        app: String,
        /// The name.
        name: String,
    },
    /// The key file could not be read or written.
    #[error("cannot {what} the master key file {path}: {source}")]
    KeyFile {
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The key file does not hold a key.
    #[error(
        "the master key file {path} holds {len} bytes, not {KEY_LEN}: restore it from your backup (see docs/secrets.md)"
    )]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What it holds.
        len: usize,
    },
    /// The stored data keys were wrapped by another master key.
    #[error(
        "the master key in {path} (id {found}) is not the one that wrapped the stored data keys ({expected}): restore the right key file from your backup, or point HANGAR_MASTER_KEY_FILE at it"
    )]
    WrongMasterKey {
        /// The key file.
        path: PathBuf,
        /// Its key's id.
        found: String,
        /// The ids the store expects.
        expected: String,
    },
    /// A wrapped data key does not decrypt.
    #[error(
        "the data key of app {app} cannot be unwrapped with master key {key_id}: the store was altered or belongs to another key file"
    )]
    Unwrap {
        /// The app.
        app: String,
        /// The master key's id.
        key_id: String,
    },
    /// A secret does not decrypt.
    #[error(
        "secret {name} of app {app} cannot be decrypted: its stored ciphertext was altered or moved; set it again"
    )]
    Decrypt {
        /// The app.
        app: String,
        /// The name.
        name: String,
    },
    /// The server was started without its master key (a bug in the caller).
    #[error("the master key is not loaded: the server loads it at start")]
    NotLoaded,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> Self {
        match e {
            SecretsError::InvalidName { .. }
            | SecretsError::Reserved { .. }
            | SecretsError::TooLarge { .. } => ApiError::Unprocessable(e.to_string()),
            SecretsError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            SecretsError::Store(s) => ApiError::from(s),
            other => ApiError::internal(other),
        }
    }
}

/// Checks a secret's name and value: an environment variable name that the platform does
/// not set itself, and a value of at most [`MAX_SECRET_BYTES`].
pub fn validate_secret(name: &str, value: Option<&SecretValue>) -> Result<(), SecretsError> {
    validate_secret_name(name)?;
    if let Some(v) = value
        && v.len() > MAX_SECRET_BYTES
    {
        return Err(SecretsError::TooLarge {
            name: name.to_owned(),
            len: v.len(),
        });
    }
    Ok(())
}

/// Checks a secret's name (see [`validate_secret`]).
pub fn validate_secret_name(name: &str) -> Result<(), SecretsError> {
    if validate_env_name(name).is_err() {
        return Err(SecretsError::InvalidName {
            name: name.to_owned(),
        });
    }
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) || RESERVED_NAMES.contains(&name) {
        return Err(SecretsError::Reserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// 32 key bytes, wiped when dropped.
type KeyBytes = Zeroizing<[u8; KEY_LEN]>;

fn random_key() -> KeyBytes {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::fill(&mut key[..]);
    key
}

fn cipher(key: &KeyBytes) -> XChaCha20Poly1305 {
    // The length is fixed by the type, so this cannot fail.
    <XChaCha20Poly1305 as KeyInit>::new_from_slice(&key[..])
        .unwrap_or_else(|_| unreachable!("a 32-byte key has the right length"))
}

/// Encrypts `plaintext` with a fresh random nonce; returns (nonce, ciphertext).
fn seal(key: &KeyBytes, aad: &[u8], plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce[..]);
    let ciphertext = cipher(key)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 encrypts any message under 256 GiB"));
    (nonce.to_vec(), ciphertext)
}

/// Decrypts; `None` when the nonce, the key, the associated data or the ciphertext is wrong.
fn open(key: &KeyBytes, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let nonce = XNonce::try_from(nonce).ok()?;
    cipher(key)
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// The master key: wraps the apps' data keys.
pub struct MasterKey {
    key: KeyBytes,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> MasterKey {
        MasterKey::from_key(random_key())
    }

    fn from_key(key: KeyBytes) -> MasterKey {
        // The id names the key without revealing it: a digest with its own domain.
        let mut h = sha2::Sha256::new();
        h.update(b"hangar master key id v1\0");
        h.update(&key[..]);
        let id = format!("mk-{}", &hex::encode(h.finalize())[..16]);
        MasterKey { key, id }
    }

    /// The key in a file's bytes.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<MasterKey, SecretsError> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SecretsError::BadKeyFile {
            path: path.to_path_buf(),
            len: bytes.len(),
        })?;
        Ok(MasterKey::from_key(Zeroizing::new(arr)))
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<MasterKey, SecretsError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| SecretsError::KeyFile {
            what: "read",
            path: path.to_path_buf(),
            source,
        })?);
        MasterKey::from_bytes(&bytes, path)
    }

    /// The key's id (a digest, safe to show and store).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn aad(app: &str) -> Vec<u8> {
        format!("hangar app data key v1\0{app}").into_bytes()
    }

    /// Wraps an app's data key: nonce followed by the ciphertext.
    pub fn wrap(&self, app: &str, data_key: &DataKey) -> Vec<u8> {
        let (mut nonce, ciphertext) = seal(&self.key, &Self::aad(app), &data_key.key[..]);
        nonce.extend_from_slice(&ciphertext);
        nonce
    }

    /// Unwraps an app's data key.
    pub fn unwrap(&self, app: &str, wrapped: &[u8]) -> Result<DataKey, SecretsError> {
        let fail = || SecretsError::Unwrap {
            app: app.to_owned(),
            key_id: self.id.clone(),
        };
        if wrapped.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
        let plain = open(&self.key, &Self::aad(app), nonce, ciphertext).ok_or_else(fail)?;
        let arr: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| fail())?;
        Ok(DataKey {
            key: Zeroizing::new(arr),
        })
    }

    /// Writes the key to `path` (0600): a temporary file, synced, renamed over `path`,
    /// and the directory synced, so a crash leaves either the old file or the new one.
    pub fn write(&self, path: &Path) -> Result<(), SecretsError> {
        let err = |what: &'static str| {
            move |source| SecretsError::KeyFile {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let tmp = sibling(path, ".tmp");
        let _ = fs::remove_file(&tmp);
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err("create"))?;
            f.write_all(&self.key[..]).map_err(err("write"))?;
            f.sync_all().map_err(err("sync"))?;
        }
        fs::rename(&tmp, path).map_err(err("rename into place"))?;
        sync_parent(path).map_err(err("sync the directory of"))
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// An app's data key: encrypts its secrets.
pub struct DataKey {
    key: KeyBytes,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> DataKey {
        DataKey { key: random_key() }
    }

    fn aad(app: &str, name: &str) -> Vec<u8> {
        format!("hangar secret v1\0{app}\0{name}").into_bytes()
    }

    /// Encrypts a value of secret `name` of `app`: (nonce, ciphertext).
    pub fn encrypt(&self, app: &str, name: &str, value: &SecretValue) -> (Vec<u8>, Vec<u8>) {
        seal(&self.key, &Self::aad(app, name), value.expose().as_bytes())
    }

    /// Decrypts a value of secret `name` of `app`.
    pub fn decrypt(
        &self,
        app: &str,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<SecretValue, SecretsError> {
        let fail = || SecretsError::Decrypt {
            app: app.to_owned(),
            name: name.to_owned(),
        };
        let plain = open(&self.key, &Self::aad(app, name), nonce, ciphertext).ok_or_else(fail)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| fail())?;
        Ok(SecretValue::new(text))
    }

    /// The value's digest as shown by `secrets list`: the first 16 hex characters of an
    /// HMAC-SHA256 under a key derived from the data key, so it identifies a value
    /// without letting anyone who sees it test guesses offline.
    pub fn digest(&self, value: &SecretValue) -> String {
        let mut derive = <HmacSha256 as hmac::KeyInit>::new_from_slice(&self.key[..])
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        derive.update(b"hangar secret digest v1");
        let digest_key = Zeroizing::new(derive.finalize().into_bytes().to_vec());
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&digest_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(value.expose().as_bytes());
        hex::encode(mac.finalize().into_bytes())[..16].to_owned()
    }
}

/// The master key in use and its file; rotations and data-key creation take turns.
pub struct Keyring {
    path: PathBuf,
    current: Mutex<Arc<MasterKey>>,
    /// Held while a data key is created and during a rotation, so no data key is ever
    /// wrapped by a master key that is being replaced.
    change: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("current", &self.current().id)
            .finish_non_exhaustive()
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// The id of the key replaced.
    pub old_master_key_id: String,
    /// The id of the new key.
    pub master_key_id: String,
    /// How many apps' data keys were re-wrapped.
    pub apps: usize,
}

impl Keyring {
    /// Loads the master key from `path`, creating it on first start; finishes or undoes a
    /// rotation a crash interrupted; checks that the key wraps the stored data keys.
    pub async fn load(path: &Path, store: &Store) -> Result<Keyring, SecretsError> {
        let pending = sibling(path, ".new");
        let ids = store.master_key_ids().await?;
        if pending.exists() {
            let new = MasterKey::read(&pending)?;
            if ids.iter().all(|id| id == new.id()) {
                // The re-wrap committed before the crash: the new key is the key.
                fs::rename(&pending, path).map_err(|source| SecretsError::KeyFile {
                    what: "finish the rotation to",
                    path: path.to_path_buf(),
                    source,
                })?;
                let _ = sync_parent(path);
                tracing::warn!(path = %path.display(), master_key_id = new.id(), "finished a master key rotation that was interrupted");
            } else {
                // The re-wrap did not commit: the old key is still the key.
                fs::remove_file(&pending).map_err(|source| SecretsError::KeyFile {
                    what: "remove the unused",
                    path: pending.clone(),
                    source,
                })?;
                tracing::warn!(path = %path.display(), "undid a master key rotation that was interrupted before it committed");
            }
        }
        let key = if path.exists() {
            let key = MasterKey::read(path)?;
            let mode = fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
                    SecretsError::KeyFile {
                        what: "restrict the permissions of",
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the master key file was readable by others; changed it to 0600");
            }
            key
        } else {
            if !ids.is_empty() {
                return Err(SecretsError::KeyFile {
                    what: "find",
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        "the store has encrypted secrets but the key file is missing; restore it from your backup",
                    ),
                });
            }
            let key = MasterKey::generate();
            key.write(path)?;
            tracing::info!(path = %path.display(), master_key_id = key.id(), "created the master key");
            key
        };
        if let Some(other) = ids.iter().find(|id| *id != key.id()) {
            return Err(SecretsError::WrongMasterKey {
                path: path.to_path_buf(),
                found: key.id().to_owned(),
                expected: other.clone(),
            });
        }
        Ok(Keyring {
            path: path.to_path_buf(),
            current: Mutex::new(Arc::new(key)),
            change: tokio::sync::Mutex::new(()),
        })
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master key in use.
    pub fn current(&self) -> Arc<MasterKey> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The app's data key; with `create`, made (and stored wrapped) when it has none.
    async fn data_key(
        &self,
        store: &Store,
        app: &str,
        create: bool,
    ) -> Result<Option<DataKey>, SecretsError> {
        if let Some(rec) = store.app_key(app).await? {
            let master = self.current();
            if rec.master_key_id == master.id() {
                return master.unwrap(app, &rec.wrapped_key).map(Some);
            }
            // A rotation is under way: wait for it, then read both again.
            let _turn = self.change.lock().await;
            let master = self.current();
            let rec = store
                .app_key(app)
                .await?
                .ok_or_else(|| SecretsError::Unwrap {
                    app: app.to_owned(),
                    key_id: master.id().to_owned(),
                })?;
            return master.unwrap(app, &rec.wrapped_key).map(Some);
        }
        if !create {
            return Ok(None);
        }
        let _turn = self.change.lock().await;
        let master = self.current();
        let fresh = DataKey::generate();
        let rec = store
            .insert_app_key(app, &master.wrap(app, &fresh), master.id())
            .await?;
        // Another writer may have won the race: use whatever key is stored.
        master.unwrap(app, &rec.wrapped_key).map(Some)
    }

    /// Replaces the master key: a new key in `<file>.new`, every data key re-wrapped under
    /// it in one transaction, then the new file renamed over the old one. Data keys do not
    /// change, so running machines and stored secrets are unaffected.
    pub async fn rotate(&self, store: &Store) -> Result<Rotation, SecretsError> {
        let _turn = self.change.lock().await;
        let old = self.current();
        let new = MasterKey::generate();
        let pending = sibling(&self.path, ".new");
        new.write(&pending)?;
        let result = async {
            let mut rewrapped = Vec::new();
            for rec in store.list_app_keys().await? {
                let data_key = old.unwrap(&rec.app, &rec.wrapped_key)?;
                rewrapped.push((rec.app.clone(), new.wrap(&rec.app, &data_key)));
            }
            store
                .rewrap_app_keys(old.id(), new.id(), &rewrapped)
                .await?;
            Ok::<usize, SecretsError>(rewrapped.len())
        }
        .await;
        let apps = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&pending);
                return Err(e);
            }
        };
        let rotation = Rotation {
            old_master_key_id: old.id().to_owned(),
            master_key_id: new.id().to_owned(),
            apps,
        };
        // The store is under the new key from here on, so this process uses it even if
        // the rename fails; the next start finishes a rename that did not happen.
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        fs::rename(&pending, &self.path).map_err(|source| SecretsError::KeyFile {
            what: "replace",
            path: self.path.clone(),
            source,
        })?;
        let _ = sync_parent(&self.path);
        tracing::info!(old = %rotation.old_master_key_id, new = %rotation.master_key_id, apps, "rotated the master key");
        Ok(rotation)
    }
}

/// A secret as the API shows it: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    /// The environment variable name.
    pub name: String,
    /// The keyed digest of the value.
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl Control {
    /// Loads (or on first start creates) the master key; the server calls this once
    /// before serving. Returns the key's id.
    pub async fn load_master_key(&self, path: &Path) -> Result<String, SecretsError> {
        let ring = Keyring::load(path, &self.store).await?;
        let id = ring.current().id().to_owned();
        // A second load (only in tests) keeps the first keyring.
        let _ = self.secrets.set(ring);
        Ok(id)
    }

    fn keyring(&self) -> Result<&Keyring, SecretsError> {
        self.secrets.get().ok_or(SecretsError::NotLoaded)
    }

    /// The app's secrets (names, digests, dates) and its secrets version.
    pub async fn list_secrets(&self, app: &str) -> ApiResult<(Vec<SecretInfo>, i64)> {
        let records = self.store.list_secrets(app).await?;
        let version = self.store.secrets_version(app).await?;
        Ok((
            records
                .into_iter()
                .map(|r| SecretInfo {
                    name: r.name,
                    digest: r.digest,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                })
                .collect(),
            version,
        ))
    }

    /// Sets (`Some`) and unsets (`None`) secrets of an app in one transaction; returns the
    /// new secrets version. Every name is checked before anything changes; unsetting a
    /// secret that does not exist is a 404.
    pub async fn change_secrets(
        &self,
        app: &str,
        values: BTreeMap<String, Option<SecretValue>>,
    ) -> ApiResult<i64> {
        for (name, value) in &values {
            validate_secret(name, value.as_ref())?;
        }
        let existing: Vec<String> = self
            .store
            .list_secrets(app)
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        for (name, value) in &values {
            if value.is_none() && !existing.contains(name) {
                return Err(SecretsError::NotFound {
                    app: app.to_owned(),
                    name: name.clone(),
                }
                .into());
            }
        }
        let ring = self.keyring()?;
        let key = ring
            .data_key(&self.store, app, true)
            .await?
            .ok_or(SecretsError::NotLoaded)?;
        let changes: Vec<SecretChange> = values
            .into_iter()
            .map(|(name, value)| match value {
                Some(v) => {
                    let (nonce, ciphertext) = key.encrypt(app, &name, &v);
                    SecretChange::Set {
                        digest: key.digest(&v),
                        name,
                        ciphertext,
                        nonce,
                    }
                }
                None => SecretChange::Unset { name },
            })
            .collect();
        let names: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                SecretChange::Set { name, .. } | SecretChange::Unset { name } => name.as_str(),
            })
            .collect();
        tracing::info!(app, secrets = ?names, "secrets changed");
        Ok(self.store.change_secrets(app, &changes).await?)
    }

    /// A digest of the app's current secrets (names and keyed value digests), for release
    /// records: it changes whenever a secret does and reveals nothing of the values.
    /// `None` when the app has no secrets.
    pub async fn secrets_digest(&self, app: &str) -> ApiResult<Option<String>> {
        let records = self.store.list_secrets(app).await?;
        if records.is_empty() {
            return Ok(None);
        }
        let mut h = sha2::Sha256::new();
        for r in &records {
            h.update(r.name.as_bytes());
            h.update(b"=");
            h.update(r.digest.as_bytes());
            h.update(b"\n");
        }
        Ok(Some(hex::encode(h.finalize())[..16].to_owned()))
    }

    /// A machine's environment from the platform's variables and the app's secrets,
    /// decrypted here and nowhere else. Secrets override the machine config's `env` (as on
    /// Fly); the platform's variables cannot clash, their names are reserved.
    pub(crate) async fn machine_env(
        &self,
        app: &str,
        platform: BTreeMap<String, String>,
    ) -> ApiResult<BTreeMap<String, String>> {
        let records = self.store.list_secrets(app).await?;
        if records.is_empty() {
            return Ok(platform);
        }
        let key = self
            .keyring()?
            .data_key(&self.store, app, false)
            .await?
            .ok_or_else(|| SecretsError::Unwrap {
                app: app.to_owned(),
                key_id: "(none stored)".to_owned(),
            })?;
        let mut env = BTreeMap::new();
        for r in &records {
            let value = key.decrypt(app, &r.name, &r.nonce, &r.ciphertext)?;
            env.insert(r.name.clone(), value.expose().to_owned());
        }
        env.extend(platform);
        Ok(env)
    }

    /// Replaces the master key (admin only; see [`Keyring::rotate`]).
    pub async fn rotate_master_key(&self) -> ApiResult<Rotation> {
        Ok(self.keyring()?.rotate(&self.store).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SecretValue {
        SecretValue::new(s.to_owned())
    }

    #[test]
    fn values_redact_themselves() {
        let s = v("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert!(!format!("{:?}", DataKey::generate()).contains('0'));
        let m = MasterKey::generate();
        assert!(format!("{m:?}").contains(m.id()));
    }

    #[test]
    fn secrets_roundtrip_and_are_bound_to_their_app_and_name() {
        let key = DataKey::generate();
        let (nonce, ct) = key.encrypt("web", "DB_PASSWORD", &v("s3cret"));
        assert!(!ct.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            key.decrypt("web", "DB_PASSWORD", &nonce, &ct)
                .unwrap()
                .expose(),
            "s3cret"
        );
        // Moved to another name or app, altered, or under another key: refused.
        assert!(key.decrypt("web", "OTHER", &nonce, &ct).is_err());
        assert!(key.decrypt("api", "DB_PASSWORD", &nonce, &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(key.decrypt("web", "DB_PASSWORD", &nonce, &bad).is_err());
        assert!(
            key.decrypt("web", "DB_PASSWORD", &nonce[..12], &ct)
                .is_err()
        );
        assert!(
            DataKey::generate()
                .decrypt("web", "DB_PASSWORD", &nonce, &ct)
                .is_err()
        );
        // A fresh nonce every time.
        let (nonce2, ct2) = key.encrypt("web", "DB_PASSWORD", &v("s3cret"));
        assert_ne!(nonce, nonce2);
        assert_ne!(ct, ct2);
    }

    #[test]
    fn digests_are_keyed_stable_and_short() {
        let a = DataKey::generate();
        let b = DataKey::generate();
        assert_eq!(a.digest(&v("x")), a.digest(&v("x")));
        assert_ne!(a.digest(&v("x")), a.digest(&v("y")));
        // Another app's key gives another digest: no guessing with a public function.
        assert_ne!(a.digest(&v("x")), b.digest(&v("x")));
        assert_eq!(a.digest(&v("x")).len(), 16);
    }

    #[test]
    fn data_keys_wrap_under_the_master_key_for_one_app() {
        let m = MasterKey::generate();
        let dk = DataKey::generate();
        let wrapped = m.wrap("web", &dk);
        let back = m.unwrap("web", &wrapped).unwrap();
        assert_eq!(*back.key, *dk.key);
        assert!(m.unwrap("api", &wrapped).is_err());
        assert!(MasterKey::generate().unwrap("web", &wrapped).is_err());
        assert!(m.unwrap("web", &wrapped[..10]).is_err());
        assert_ne!(MasterKey::generate().id(), m.id());
    }

    #[test]
    fn names_and_sizes_are_checked() {
        let check = |name: &str, len: usize, want: Option<&str>| {
            // A byte no message contains, so a quoted value would be seen.
            let value = v(&"\u{7}".repeat(len));
            match (validate_secret(name, Some(&value)), want) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(needle), "{name}: {msg}");
                    assert!(!msg.contains('\u{7}'), "{msg}");
                }
                (got, want) => panic!("{name} ({len} bytes): got {got:?}, want {want:?}"),
            }
        };
        check("DATABASE_URL", 10, None);
        check("_x1", 0, None);
        check("K", MAX_SECRET_BYTES, None);
        check(
            "K",
            MAX_SECRET_BYTES + 1,
            Some("the value of K is 65537 bytes; at most 65536"),
        );
        check("1BAD", 1, Some("1BAD"));
        check("BAD-NAME", 1, Some("BAD-NAME"));
        check("", 1, Some("invalid secret name"));
        check("FLY_APP_NAME", 1, Some("FLY_APP_NAME is reserved"));
        check("HANGAR_X", 1, Some("HANGAR_X is reserved"));
        check("RELEASE_COMMAND", 1, Some("reserved"));
        check("FLYER", 1, None);
    }

    async fn store(dir: &Path) -> Store {
        let store = Store::open(&dir.join("s.db")).await.unwrap();
        let org = store.ensure_org("default").await.unwrap();
        store.create_app("web", &org).await.unwrap();
        store.create_app("api", &org).await.unwrap();
        store
    }

    #[tokio::test]
    async fn the_key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let path = dir.path().join("master.key");
        let ring = Keyring::load(&path, &store).await.unwrap();
        let id = ring.current().id().to_owned();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        ring.data_key(&store, "web", true).await.unwrap().unwrap();
        let again = Keyring::load(&path, &store).await.unwrap();
        assert_eq!(again.current().id(), id);
        assert!(
            again
                .data_key(&store, "web", false)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            again
                .data_key(&store, "api", false)
                .await
                .unwrap()
                .is_none()
        );
        // Another key file does not match the stored data keys.
        let other = dir.path().join("other.key");
        MasterKey::generate().write(&other).unwrap();
        let err = Keyring::load(&other, &store).await.unwrap_err();
        assert!(matches!(err, SecretsError::WrongMasterKey { .. }), "{err}");
        // A missing key file with data keys in the store is an error, not a new key.
        let err = Keyring::load(&dir.path().join("gone.key"), &store)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("restore it"), "{err}");
        // A truncated file is named.
        fs::write(dir.path().join("short.key"), b"short").unwrap();
        let err = Keyring::load(&dir.path().join("short.key"), &store)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }

    #[tokio::test]
    async fn rotation_rewraps_every_data_key_and_the_old_key_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let path = dir.path().join("master.key");
        let ring = Keyring::load(&path, &store).await.unwrap();
        let web = ring.data_key(&store, "web", true).await.unwrap().unwrap();
        let (nonce, ct) = web.encrypt("web", "K", &v("value"));
        ring.data_key(&store, "api", true).await.unwrap().unwrap();
        let old_bytes = fs::read(&path).unwrap();
        let old = MasterKey::from_bytes(&old_bytes, &path).unwrap();

        let rotation = ring.rotate(&store).await.unwrap();
        assert_eq!(rotation.apps, 2);
        assert_eq!(rotation.old_master_key_id, old.id());
        assert_ne!(fs::read(&path).unwrap(), old_bytes);
        assert!(!sibling(&path, ".new").exists());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for rec in store.list_app_keys().await.unwrap() {
            assert_eq!(rec.master_key_id, rotation.master_key_id);
            assert!(old.unwrap(&rec.app, &rec.wrapped_key).is_err());
        }
        // The data key did not change: old ciphertexts still open, in this process and
        // after a restart with the new file.
        let web2 = ring.data_key(&store, "web", false).await.unwrap().unwrap();
        assert_eq!(
            web2.decrypt("web", "K", &nonce, &ct).unwrap().expose(),
            "value"
        );
        let reloaded = Keyring::load(&path, &store).await.unwrap();
        let web3 = reloaded
            .data_key(&store, "web", false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            web3.decrypt("web", "K", &nonce, &ct).unwrap().expose(),
            "value"
        );
    }

    #[tokio::test]
    async fn an_interrupted_rotation_is_finished_or_undone_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let path = dir.path().join("master.key");
        let ring = Keyring::load(&path, &store).await.unwrap();
        let old_id = ring.current().id().to_owned();
        ring.data_key(&store, "web", true).await.unwrap();

        // Crash after writing master.key.new, before the re-wrap committed: undone.
        MasterKey::generate()
            .write(&sibling(&path, ".new"))
            .unwrap();
        let ring = Keyring::load(&path, &store).await.unwrap();
        assert_eq!(ring.current().id(), old_id);
        assert!(!sibling(&path, ".new").exists());

        // Crash after the re-wrap committed, before the rename: finished.
        let new = MasterKey::generate();
        new.write(&sibling(&path, ".new")).unwrap();
        let rec = store.app_key("web").await.unwrap().unwrap();
        let dk = ring.current().unwrap("web", &rec.wrapped_key).unwrap();
        store
            .rewrap_app_keys(&old_id, new.id(), &[("web".into(), new.wrap("web", &dk))])
            .await
            .unwrap();
        let ring = Keyring::load(&path, &store).await.unwrap();
        assert_eq!(ring.current().id(), new.id());
        assert!(!sibling(&path, ".new").exists());
        assert!(ring.data_key(&store, "web", false).await.unwrap().is_some());
    }
}
