//! Where the client finds the API address and token.
//!
//! Each of the two values is taken from the first place that has it:
//! 1. the `--api-url` / `--token` flags ([`Overrides`]),
//! 2. the environment: `HANGAR_API_URL` / `HANGAR_API_TOKEN`,
//! 3. the config file: `$HANGAR_CONFIG`, else `$XDG_CONFIG_HOME/hangar/config.toml`,
//!    else `~/.config/hangar/config.toml` (`api_url = "..."`, `token = "..."`),
//! 4. the defaults: `http://127.0.0.1:4280`, and the admin token the server writes to
//!    `$HANGAR_DATA_DIR/admin-token` (default `/var/lib/hangar/admin-token`), which only
//!    root can read; so root on the server host needs no setup at all.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ClientError;

/// The API address used when nothing else says.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:4280";
/// The server's data directory when `HANGAR_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/hangar";

/// An API token; `Debug` and `Display` do not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The secret itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--api-url`.
    pub api_url: Option<String>,
    /// `--token`.
    pub token: Option<Token>,
}

/// The resolved address and token, and where each came from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of the API.
    pub api_url: String,
    /// The token.
    pub token: Token,
    /// Where the token came from, for messages (`HANGAR_API_TOKEN`, a file path, ...).
    pub token_source: String,
}

/// The client config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    api_url: Option<String>,
    token: Option<String>,
}

/// Resolves the settings from the flags and the process environment.
pub fn resolve(overrides: &Overrides) -> Result<Settings, ClientError> {
    resolve_with(overrides, &|name| std::env::var(name).ok())
}

/// Resolves the settings with `env` as the environment (tests pass their own).
pub fn resolve_with(
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ClientError> {
    // Empty variables count as unset, as a shell `export X=` usually means "no value".
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let (config_label, config) = load_config_file(&var)?;

    let api_url = overrides
        .api_url
        .clone()
        .or_else(|| var("HANGAR_API_URL"))
        .or_else(|| config.api_url.clone())
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());

    if let Some(token) = overrides.token.clone() {
        return Ok(Settings {
            api_url,
            token,
            token_source: "--token".to_owned(),
        });
    }
    if let Some(token) = var("HANGAR_API_TOKEN") {
        return Ok(Settings {
            api_url,
            token: Token::new(token.trim()),
            token_source: "HANGAR_API_TOKEN".to_owned(),
        });
    }
    if let Some(token) = config.token.filter(|t| !t.trim().is_empty()) {
        return Ok(Settings {
            api_url,
            token: Token::new(token.trim()),
            token_source: config_label,
        });
    }
    let data_dir = var("HANGAR_DATA_DIR").unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
    let token_file = Path::new(&data_dir).join("admin-token");
    let why = match std::fs::read_to_string(&token_file) {
        Ok(token) if !token.trim().is_empty() => {
            return Ok(Settings {
                api_url,
                token: Token::new(token.trim()),
                token_source: token_file.display().to_string(),
            });
        }
        Ok(_) => "empty".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            "not readable: run as root".to_owned()
        }
        Err(e) => e.to_string(),
    };
    Err(ClientError::NoToken {
        looked: format!(
            "--token, HANGAR_API_TOKEN, {config_label}, {} ({why})",
            token_file.display()
        ),
    })
}

/// Finds and parses the config file; a missing default file is no error, a missing
/// `$HANGAR_CONFIG` is. Also returns how to name the file in messages.
fn load_config_file(
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, ConfigFile), ClientError> {
    let (path, required) = if let Some(p) = var("HANGAR_CONFIG") {
        (PathBuf::from(p), true)
    } else if let Some(dir) = var("XDG_CONFIG_HOME") {
        (Path::new(&dir).join("hangar/config.toml"), false)
    } else if let Some(home) = var("HOME") {
        (Path::new(&home).join(".config/hangar/config.toml"), false)
    } else {
        return Ok((
            "no config file (HOME is unset)".to_owned(),
            ConfigFile::default(),
        ));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok((
                format!("{} (does not exist)", path.display()),
                ConfigFile::default(),
            ));
        }
        Err(e) => {
            return Err(ClientError::Config {
                message: format!("{e}; fix HANGAR_CONFIG or create the file"),
                path,
            });
        }
    };
    let config: ConfigFile = toml::from_str(&text).map_err(|e| ClientError::Config {
        message: format!(
            "{}; it may only set api_url = \"...\" and token = \"...\"",
            e.message()
        ),
        path: path.clone(),
    })?;
    Ok((path.display().to_string(), config))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// A temp dir with a data dir holding `admin-token` and a config file.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(admin_token: Option<&str>, config: Option<&str>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("data")).unwrap();
            if let Some(t) = admin_token {
                std::fs::write(dir.path().join("data/admin-token"), t).unwrap();
            }
            if let Some(c) = config {
                std::fs::create_dir_all(dir.path().join("home/.config/hangar")).unwrap();
                std::fs::write(dir.path().join("home/.config/hangar/config.toml"), c).unwrap();
            }
            Fixture { dir }
        }
        fn data(&self) -> String {
            self.dir.path().join("data").display().to_string()
        }
        fn home(&self) -> String {
            self.dir.path().join("home").display().to_string()
        }
    }

    #[test]
    fn each_source_wins_over_the_next() {
        let f = Fixture::new(
            Some("admin\n"),
            Some("api_url = \"http://cfg:1\"\ntoken = \"cfgtok\"\n"),
        );
        let (data, home) = (f.data(), f.home());
        let flags = Overrides {
            api_url: Some("http://flag:1".into()),
            token: Some(Token::new("flagtok")),
        };
        let full_env = env_of(&[
            ("HANGAR_API_URL", "http://env:1"),
            ("HANGAR_API_TOKEN", "envtok"),
            ("HANGAR_DATA_DIR", &data),
            ("HOME", &home),
        ]);
        let s = resolve_with(&flags, &full_env).unwrap();
        assert_eq!(
            (s.api_url.as_str(), s.token.expose()),
            ("http://flag:1", "flagtok")
        );

        let s = resolve_with(&Overrides::default(), &full_env).unwrap();
        assert_eq!(
            (s.api_url.as_str(), s.token.expose()),
            ("http://env:1", "envtok")
        );
        assert_eq!(s.token_source, "HANGAR_API_TOKEN");

        let no_env = env_of(&[("HANGAR_DATA_DIR", &data), ("HOME", &home)]);
        let s = resolve_with(&Overrides::default(), &no_env).unwrap();
        assert_eq!(
            (s.api_url.as_str(), s.token.expose()),
            ("http://cfg:1", "cfgtok")
        );

        let only_data = Fixture::new(Some("  admin\n"), None);
        let (data, home) = (only_data.data(), only_data.home());
        let s = resolve_with(
            &Overrides::default(),
            &env_of(&[("HANGAR_DATA_DIR", &data), ("HOME", &home)]),
        )
        .unwrap();
        assert_eq!(
            (s.api_url.as_str(), s.token.expose()),
            (DEFAULT_API_URL, "admin")
        );
        assert!(
            s.token_source.ends_with("admin-token"),
            "{}",
            s.token_source
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let f = Fixture::new(Some("admin"), None);
        let (data, home) = (f.data(), f.home());
        let env = env_of(&[
            ("HANGAR_API_URL", ""),
            ("HANGAR_API_TOKEN", " "),
            ("HANGAR_DATA_DIR", &data),
            ("HOME", &home),
        ]);
        let s = resolve_with(&Overrides::default(), &env).unwrap();
        assert_eq!(
            (s.api_url.as_str(), s.token.expose()),
            (DEFAULT_API_URL, "admin")
        );
    }

    #[test]
    fn hangar_config_names_the_file_and_xdg_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("my.toml");
        std::fs::write(&cfg, "token = \"t1\"").unwrap();
        let cfg_s = cfg.display().to_string();
        let s = resolve_with(&Overrides::default(), &env_of(&[("HANGAR_CONFIG", &cfg_s)])).unwrap();
        assert_eq!(s.token.expose(), "t1");
        assert_eq!(s.token_source, cfg_s);

        std::fs::create_dir_all(dir.path().join("xdg/hangar")).unwrap();
        std::fs::write(dir.path().join("xdg/hangar/config.toml"), "token = \"t2\"").unwrap();
        let xdg = dir.path().join("xdg").display().to_string();
        let s = resolve_with(
            &Overrides::default(),
            &env_of(&[("XDG_CONFIG_HOME", &xdg), ("HOME", "/nonexistent")]),
        )
        .unwrap();
        assert_eq!(s.token.expose(), "t2");
    }

    #[test]
    fn bad_config_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (content, want) in [
            ("token = ", "config.toml"),
            ("tokn = \"x\"", "tokn"),
            ("token = 5", "config.toml"),
        ] {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, content).unwrap();
            let p = path.display().to_string();
            let err =
                resolve_with(&Overrides::default(), &env_of(&[("HANGAR_CONFIG", &p)])).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ClientError::Config { .. }), "{msg}");
            assert!(msg.contains(want), "{content:?}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        let missing = dir.path().join("missing.toml").display().to_string();
        let err = resolve_with(
            &Overrides::default(),
            &env_of(&[("HANGAR_CONFIG", &missing)]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn no_token_lists_every_place_looked() {
        let f = Fixture::new(None, None);
        let (data, home) = (f.data(), f.home());
        let err = resolve_with(
            &Overrides::default(),
            &env_of(&[("HANGAR_DATA_DIR", &data), ("HOME", &home)]),
        )
        .unwrap_err();
        let msg = err.to_string();
        for place in [
            "--token",
            "HANGAR_API_TOKEN",
            "config.toml",
            "admin-token",
            "does not exist",
        ] {
            assert!(msg.contains(place), "{place} missing from: {msg}");
        }
    }

    #[test]
    fn tokens_do_not_print() {
        let t = Token::new("s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
