//! Data-driven: every real-world fly.toml in the shared fixtures folder.
//!
//! Each file that is valid TOML must validate without errors (warnings are
//! allowed and printed). The few files rejected on purpose are listed in
//! `EXPECTED_REJECTIONS` with the reason a user would accept.

use std::path::{Path, PathBuf};

use hangar_core::config::{self, Format, Severity};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/real-world/fly"
);

/// Files that are rejected, the error they must report (message fragment, line, column) and why.
const EXPECTED_REJECTIONS: &[(&str, &str, u32, u32, &str)] = &[
    (
        "079-",
        "duplicate key processes",
        9,
        2,
        "`processes` is declared twice (a key on line 7, then a [processes] table): not valid TOML",
    ),
    (
        "057-",
        "concurrency",
        24,
        17,
        "flyctl's own always-invalid fixture: `concurrency = 20` is neither a table nor \"soft,hard\"",
    ),
    (
        "053-",
        "rolling-eyes",
        40,
        14,
        "flyctl's reference fixture uses strategy = \"rolling-eyes\", which is not a deploy strategy, and scopes [[vm]] and [[services]] to a group \"app\" that its [processes] does not define",
    ),
];

fn fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("cannot read {FIXTURES}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_real_world_file_validates_or_is_rejected_for_a_stated_reason() {
    let files = fixtures();
    assert!(
        files.len() >= 50,
        "expected the fixture folder, found {} files",
        files.len()
    );
    let mut failures = Vec::new();
    let mut rejected = Vec::new();
    for path in &files {
        let file = name(path);
        let src = std::fs::read_to_string(path).unwrap();
        let parsed = config::parse(&src, Format::from_path(&file), &file);
        for d in &parsed.diagnostics {
            println!("{d}");
        }
        let errors: Vec<_> = parsed.errors().collect();
        let expected = EXPECTED_REJECTIONS
            .iter()
            .find(|(prefix, ..)| file.starts_with(prefix));
        match expected {
            Some((_, fragment, line, column, _why)) => {
                rejected.push(file.clone());
                let hit = errors.iter().any(|d| {
                    d.message.contains(fragment) && d.line == *line && d.column == *column
                });
                if !hit {
                    failures.push(format!(
                        "{file}: expected an error containing {fragment:?} at {line}:{column}, got {errors:#?}"
                    ));
                }
            }
            None => {
                if !errors.is_empty() {
                    failures.push(format!("{file}: unexpected errors {errors:#?}"));
                }
                let cfg = parsed.config.expect("a config when there are no errors");
                if let Err(e) = config::resolve(&cfg, "registry.example/app:1") {
                    failures.push(format!("{file}: validated but does not resolve: {e}"));
                }
            }
        }
        for d in &parsed.diagnostics {
            assert!(d.line >= 1 && d.column >= 1, "{file}: {d:?}");
            assert!(d.severity == Severity::Error || d.severity == Severity::Warning);
        }
    }
    assert_eq!(
        rejected.len(),
        EXPECTED_REJECTIONS.len(),
        "a listed rejection file is missing"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
