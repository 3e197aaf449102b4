//! Image references: `busybox`, `busybox:1.36`, `name@sha256:...`, `sha256:<digest>`,
//! `registry.example:5000/team/app:v2`.
//!
//! The grammar is the Docker distribution one (lower-case path components separated by
//! `/`, tags of up to 128 word characters, sha256 digests). A reference is registry-looking
//! when its first component contains `.` or `:` or is `localhost`; otherwise it names a
//! local image. Names are not expanded to `docker.io/library/...`: `busybox` stays
//! `busybox:latest` locally, and Docker Hub names are shortened to that familiar form
//! (`docker.io/library/busybox:1` is `busybox:1`), as `docker save` records them.

use super::{ImageError, digest_hex};

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedReference {
    /// `sha256:<64 hex>`: a manifest digest alone.
    Digest(String),
    /// A repository with an optional registry, tag and digest.
    Named(NamedReference),
}

/// A repository reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedReference {
    /// `host[:port]` when the reference is registry-looking.
    pub registry: Option<String>,
    /// The repository path below the registry, e.g. `team/app`.
    pub repository: String,
    /// The tag, if given (`latest` is implied when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:...`, if given.
    pub digest: Option<String>,
}

impl NamedReference {
    /// `registry/repository` or `repository`.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// Whether the reference names a registry (and can be pulled).
    pub fn is_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// The tag, or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The normalised form used as the key in the store's tag index: `name@digest` when a
    /// digest is given (the digest decides, the tag is dropped), else `name:tag`.
    pub fn canonical(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}@{digest}", self.name()),
            None => format!("{}:{}", self.name(), self.tag_or_latest()),
        }
    }
}

fn invalid(reference: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// Parses and validates an image reference.
pub fn parse_reference(s: &str) -> Result<ParsedReference, ImageError> {
    if s.is_empty() {
        return Err(invalid(s, "the reference is empty"));
    }
    if s.len() > 512 {
        return Err(invalid(s, "the reference is longer than 512 characters"));
    }
    if s.starts_with("sha256:") && !s.contains('/') && !s.contains('@') {
        return match digest_hex(s) {
            Some(_) => Ok(ParsedReference::Digest(s.to_string())),
            None => Err(invalid(
                s,
                "a digest must be sha256: followed by 64 lower-case hex digits",
            )),
        };
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            if digest_hex(digest).is_none() {
                return Err(invalid(
                    s,
                    "the digest after '@' must be sha256: followed by 64 lower-case hex digits",
                ));
            }
            (rest, Some(digest.to_string()))
        }
        None => (s, None),
    };
    // A ':' after the last '/' separates the tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(invalid(s, "the repository name is missing"));
    }
    if let Some(tag) = tag {
        validate_tag(s, tag)?;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let registry = match components.as_slice() {
        [first, _, ..] if first.contains('.') || first.contains(':') || *first == "localhost" => {
            validate_registry(s, first)?;
            Some(components.remove(0).to_string())
        }
        _ => None,
    };
    for component in &components {
        validate_component(s, component)?;
    }
    let mut repository = components.join("/");
    // Docker Hub names are kept in their familiar form, as `docker save` writes them:
    // `docker.io/library/busybox` is `busybox`, `docker.io/team/app` is `team/app`.
    let registry = match registry {
        Some(r) if r == "docker.io" || r == "index.docker.io" => {
            if let Some(rest) = repository.strip_prefix("library/")
                && !rest.contains('/')
            {
                repository = rest.to_string();
            }
            None
        }
        other => other,
    };
    if repository.len() > 255 {
        return Err(invalid(
            s,
            "the repository name is longer than 255 characters",
        ));
    }
    Ok(ParsedReference::Named(NamedReference {
        registry,
        repository,
        tag: tag.map(str::to_string),
        digest,
    }))
}

fn validate_tag(s: &str, tag: &str) -> Result<(), ImageError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            s,
            format!(
                "tag {tag:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            ),
        ))
    }
}

fn validate_registry(s: &str, registry: &str) -> Result<(), ImageError> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // A bracketed IPv6 address, e.g. `[::1]:5000`.
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(invalid(s, "an IPv6 registry address needs a closing ']'"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid(
                s,
                format!("registry address [{addr}] is not an IPv6 address"),
            ));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| invalid(s, "expected ':' and a port after ']'"))?,
            ),
        };
        (None, port)
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(invalid(
                s,
                format!("registry host {host:?} is not a valid host name"),
            ));
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(invalid(
            s,
            format!("registry port {port:?} is not a port number"),
        ));
    }
    Ok(())
}

/// A path component: lower-case letters and digits, separated by one `.`, one or two `_`,
/// or any number of `-`.
fn validate_component(s: &str, component: &str) -> Result<(), ImageError> {
    if component.is_empty() {
        return Err(invalid(
            s,
            "the name has an empty path component (a leading, trailing or double '/')",
        ));
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            s,
            format!("{component:?} has upper-case letters; repository names are lower-case"),
        ));
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut ok = alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
    let mut i = 0;
    while ok && i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
    }
    if ok {
        Ok(())
    } else {
        Err(invalid(
            s,
            format!(
                "{component:?} must be lower-case letters and digits separated by '.', '_', '__' or '-'"
            ),
        ))
    }
}
