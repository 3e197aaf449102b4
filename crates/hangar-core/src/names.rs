//! Rules for user-chosen names: apps, organizations, environment variables, image tags.

/// Why a name was refused; the message says what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// An app or organization name that is not a DNS label.
    #[error(
        "invalid {kind} name {name:?}: use 1-63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'"
    )]
    NotDnsLabel {
        /// "app" or "organization".
        kind: &'static str,
        /// The refused name.
        name: String,
    },
    /// An environment variable name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error(
        "invalid environment variable name {0:?}: use letters, digits and '_', not starting with a digit"
    )]
    NotEnvName(String),
}

/// Checks an app or organization name: a DNS label that starts with a letter.
pub fn validate_dns_label(kind: &'static str, name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(NameError::NotDnsLabel {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Checks an app name.
pub fn validate_app_name(name: &str) -> Result<(), NameError> {
    validate_dns_label("app", name)
}

/// Checks an organization slug.
pub fn validate_org_name(name: &str) -> Result<(), NameError> {
    validate_dns_label("organization", name)
}

/// Checks an environment variable name (POSIX portable form).
pub fn validate_env_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::NotEnvName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for good in ["a", "my-app", "app2", "x".repeat(63).as_str()] {
            assert!(validate_app_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "My-App",
            "2app",
            "a_b",
            "a.b",
            "../x",
            &"x".repeat(64),
        ] {
            assert!(validate_app_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        for good in ["A", "_A", "PORT", "a1_b"] {
            assert!(validate_env_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "é"] {
            assert!(validate_env_name(bad).is_err(), "{bad}");
        }
    }
}
