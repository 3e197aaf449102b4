//! Image reference parsing: every accepted form and the invalid-reference catalogue.

use hangar_runtime::image::{ImageError, ParsedReference, parse_reference};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Parses `input` and compares a compact rendering with `expect`:
/// `local <canonical>`, `registry <canonical>`, `digest <digest>` or `invalid`.
fn check(input: &str, expect: &str) {
    let got = match parse_reference(input) {
        Ok(ParsedReference::Digest(d)) => format!("digest {d}"),
        Ok(ParsedReference::Named(n)) if n.is_registry() => format!("registry {}", n.canonical()),
        Ok(ParsedReference::Named(n)) => format!("local {}", n.canonical()),
        Err(ImageError::InvalidReference { .. }) => "invalid".to_string(),
        Err(other) => panic!("{input:?}: unexpected error kind {other:?}"),
    };
    assert_eq!(got, expect, "parse_reference({input:?})");
}

#[test]
fn valid_references() {
    check("busybox", "local busybox:latest");
    check("busybox:1.36", "local busybox:1.36");
    check("team/app:v2", "local team/app:v2");
    check("my_app-x.y:V_1.0-rc", "local my_app-x.y:V_1.0-rc");
    check("a__b---c/d", "local a__b---c/d:latest");
    check(
        &format!("busybox@{DIGEST}"),
        &format!("local busybox@{DIGEST}"),
    );
    check(
        &format!("busybox:1.36@{DIGEST}"),
        &format!("local busybox@{DIGEST}"),
    );
    check(DIGEST, &format!("digest {DIGEST}"));
    check("localhost/app", "registry localhost/app:latest");
    check("localhost:5000/app:v1", "registry localhost:5000/app:v1");
    check(
        "127.0.0.1:5000/team/app:v1",
        "registry 127.0.0.1:5000/team/app:v1",
    );
    check(
        "registry.example/app",
        "registry registry.example/app:latest",
    );
    check("[::1]:5000/app:v1", "registry [::1]:5000/app:v1");
    // Docker Hub names take their familiar form.
    check("docker.io/library/busybox:1", "local busybox:1");
    check("docker.io/team/app", "local team/app:latest");
    check("index.docker.io/library/a/b", "local library/a/b:latest");
    // Upper case is allowed in a registry host (it is case-insensitive DNS).
    check(
        "Registry.Example/app",
        "registry Registry.Example/app:latest",
    );
}

#[test]
fn invalid_references() {
    for input in [
        "",
        "UPPER/case",
        "Busybox",
        "a//b",
        "/a",
        "a/",
        ":tag",
        "name:",
        "name:-tag",
        "name:.tag",
        &format!("name:{}", "t".repeat(129)),
        "name@sha256:short",
        "name@md5:0123",
        "sha256:abc",
        &format!("{}:tag", "sha256:XYZ"),
        "a..b",
        "a._b",
        "a___b",
        "-a",
        "a-",
        "a b",
        "registry.example:0/app",
        "registry.example:99999/app",
        "bad_host.example/app",
        "[::1/app",
        "[zz]:5000/app",
        &"a".repeat(600),
    ] {
        check(input, "invalid");
    }
}

#[test]
fn invalid_reference_error_names_the_problem() {
    let err = parse_reference("UPPER/case").unwrap_err().to_string();
    assert!(
        err.contains("UPPER/case") && err.contains("lower-case"),
        "{err}"
    );
    let err = parse_reference("name@sha256:short")
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 lower-case hex"), "{err}");
}
