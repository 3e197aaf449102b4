//! Repository names, references and digests as the distribution spec defines them.

use crate::error::RegistryError;

/// The longest repository name the spec allows.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a repository name against the distribution grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn validate_repository(name: &str) -> Result<(), RegistryError> {
    let invalid = |why: &str| {
        RegistryError::NameInvalid(format!(
            "invalid repository name {name:?}: {why}; use lower-case path components like `myapp` or `myapp/web`, where the first component is the app name"
        ))
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 255 characters"));
    }
    for component in name.split('/') {
        if !valid_component(component) {
            return Err(invalid(&format!(
                "component {component:?} must be lower-case letters and digits, separated by single `.`, one or two `_`, or dashes"
            )));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`, always followed by alnum
        // (guaranteed for the last run by the check on the final byte).
        let start = i;
        let sep = bytes[i];
        while i < bytes.len() && bytes[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The app a repository belongs to: its first path component.
pub fn app_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    Tag(String),
    /// `sha256:<64 lower-case hex>`.
    Digest(String),
}

/// Whether `tag` matches `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a manifest reference.
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    if reference.contains(':') {
        return parse_digest(reference).map(Reference::Digest);
    }
    if is_tag(reference) {
        return Ok(Reference::Tag(reference.to_string()));
    }
    Err(RegistryError::TagInvalid(format!(
        "invalid reference {reference:?}: it is neither a tag ([A-Za-z0-9_][A-Za-z0-9._-], at most 128 characters) nor a digest (sha256:<64 hex>)"
    )))
}

/// Checks a digest: `sha256:` and 64 lower-case hex characters (the only algorithm the
/// store holds; other well-formed algorithms are named as unsupported).
pub fn parse_digest(digest: &str) -> Result<String, RegistryError> {
    let invalid = |why: String| RegistryError::DigestInvalid {
        message: format!("invalid digest {digest:?}: {why}"),
        expected: Some(digest.to_string()),
        actual: None,
    };
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(invalid("a digest is `sha256:<64 hex>`".into()));
    };
    if algorithm != "sha256" {
        return Err(invalid(format!(
            "algorithm {algorithm:?} is not supported; use sha256"
        )));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(
            "sha256 digests have 64 lower-case hex characters".into(),
        ));
    }
    Ok(digest.to_string())
}

/// The hex part of a checked digest.
pub(crate) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(name: &str, ok: bool) {
        assert_eq!(validate_repository(name).is_ok(), ok, "{name:?}");
    }

    #[test]
    fn repository_grammar() {
        for good in [
            "a",
            "app",
            "app/web",
            "my-app/w.e_b",
            "a__b",
            "a---b/c1",
            "0",
            "a.b/c-d/e__f",
        ] {
            check_name(good, true);
        }
        for bad in [
            "", "App", "app/", "/app", "app//web", "a..b", "a___b", "-a", "a-", "a_", ".a",
            "a/../b", "a b", "a:b", "_blobs",
        ] {
            check_name(bad, false);
        }
        check_name(&"a".repeat(255), true);
        check_name(&"a".repeat(256), false);
    }

    #[test]
    fn references() {
        assert_eq!(parse_reference("v1").unwrap(), Reference::Tag("v1".into()));
        assert_eq!(
            parse_reference("_x.Y-1").unwrap(),
            Reference::Tag("_x.Y-1".into())
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_reference(&digest).unwrap(),
            Reference::Digest(digest.clone())
        );
        for bad in [".v1", "-v1", "v 1", "", "v/1"] {
            assert!(
                matches!(parse_reference(bad), Err(RegistryError::TagInvalid(_))),
                "{bad:?}"
            );
        }
        assert!(parse_reference(&"t".repeat(128)).is_ok());
        assert!(parse_reference(&"t".repeat(129)).is_err());
        for bad in [
            "sha256:abc",
            "sha512:00",
            "sha256:",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(
                    parse_reference(bad),
                    Err(RegistryError::DigestInvalid { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn app_is_the_first_component() {
        assert_eq!(app_of("web"), "web");
        assert_eq!(app_of("web/api/v2"), "web");
    }
}
