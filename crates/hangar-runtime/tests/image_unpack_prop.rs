//! Property test of layer unpacking: whatever sequence of files, directories, symlinks and
//! hard links a layer holds (paths and link targets drawn from `..`, `.`, `/`, an absolute
//! host directory and a few names), nothing is ever written outside the layer directory.

use std::fs;
use std::path::Path;

use hangar_runtime::image::build::{RawEntry, raw_tar};
use hangar_runtime::image::layer::unpack_layer;
use proptest::prelude::*;

/// Stands for the absolute path of a host directory, substituted when the case runs.
const SENTINEL: &str = "@sentinel@";

fn path() -> impl Strategy<Value = String> {
    // Few names, so later entries often land under earlier symlinks.
    let component = prop::sample::select(vec!["a", "a", "a", "b", "b", "..", "."]);
    (
        prop::bool::weighted(0.05),
        prop::collection::vec(component, 1..3),
    )
        .prop_map(|(absolute, parts)| {
            format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
        })
}

fn entry() -> impl Strategy<Value = (u8, String, String)> {
    let target = prop_oneof![
        path(),
        Just("/".to_string()),
        Just("../..".to_string()),
        Just(SENTINEL.to_string()),
    ];
    (0..5u8, path(), target)
}

fn build(kind: u8, path: &str, target: &str) -> RawEntry {
    match kind {
        0 => RawEntry::file(path, b"data"),
        1 => RawEntry::dir(path),
        2 | 3 => RawEntry::symlink(path, target),
        _ => RawEntry::hardlink(path, target),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn nothing_escapes_the_layer(raw in prop::collection::vec(entry(), 1..12)) {
        let outer = tempfile::tempdir().expect("tempdir");
        let sentinel = outer.path().join("sentinel");
        fs::create_dir(&sentinel).expect("sentinel");
        let layer = outer.path().join("layer");
        fs::create_dir(&layer).expect("layer");
        let sentinel_str = sentinel.display().to_string();
        let entries: Vec<RawEntry> = raw
            .iter()
            .map(|(kind, path, target)| build(*kind, path, &target.replace(SENTINEL, &sentinel_str)))
            .collect();
        let tar = raw_tar(&entries).expect("tar");
        // Any outcome is fine (many sequences are rejected); escaping is not.
        let _ = unpack_layer(tar.as_slice(), &layer);
        prop_assert_eq!(names(&sentinel), Vec::<String>::new(), "entries {:?}", entries);
        prop_assert_eq!(names(outer.path()), vec!["layer".to_string(), "sentinel".to_string()], "entries {:?}", entries);
    }
}
