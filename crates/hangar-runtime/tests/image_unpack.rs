//! Layer unpacking: the unsafe-entry catalogue (each rejected with nothing written outside
//! the layer), the resulting tree for safe layers, whiteouts, compression and diff_ids.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hangar_runtime::image::ImageError;
use hangar_runtime::image::build::{RawEntry, raw_tar};
use hangar_runtime::image::layer::unpack_layer;
use sha2::{Digest, Sha256};
use tar::EntryType;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A scratch area: `<tmp>/layer` is the unpack target, everything else is "outside".
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("layer")).expect("mkdir layer");
        Scratch { dir }
    }
    fn layer(&self) -> PathBuf {
        self.dir.path().join("layer")
    }
    fn outside(&self) -> &Path {
        self.dir.path()
    }
}

/// Renders a directory tree as sorted lines: `d path mode [opaque]`, `f path mode uid:gid
/// content`, `l path -> target`, `c path maj:min`, `p path`, `h path = other` for a second
/// name of an inode.
fn render(root: &Path) -> String {
    let mut lines = Vec::new();
    let mut inodes = std::collections::HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if fs::symlink_metadata(&path).expect("meta").is_dir() {
                stack.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let rel = path
            .strip_prefix(root)
            .expect("prefix")
            .display()
            .to_string();
        let meta = fs::symlink_metadata(&path).expect("meta");
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            let opaque = rustix::fs::lgetxattr(&path, "trusted.overlay.opaque", &mut [0u8; 8])
                .map(|n| n == 1)
                .unwrap_or(false);
            lines.push(format!(
                "d {rel} {mode:o}{}",
                if opaque { " opaque" } else { "" }
            ));
        } else if ft.is_symlink() {
            lines.push(format!(
                "l {rel} -> {}",
                fs::read_link(&path).expect("readlink").display()
            ));
        } else if ft.is_char_device() {
            let rdev = meta.rdev();
            lines.push(format!(
                "c {rel} {}:{}",
                rustix::fs::major(rdev),
                rustix::fs::minor(rdev)
            ));
        } else if ft.is_fifo() {
            lines.push(format!("p {rel}"));
        } else if let Some(first) = inodes.get(&meta.ino()) {
            lines.push(format!("h {rel} = {first}"));
        } else {
            inodes.insert(meta.ino(), rel.clone());
            let content = fs::read_to_string(&path).expect("read");
            lines.push(format!(
                "f {rel} {mode:o} {}:{} {content}",
                meta.uid(),
                meta.gid()
            ));
        }
    }
    lines.join("\n")
}

/// Unpacks `entries` and compares the resulting tree (or the error kind) with `expect`.
fn check(entries: &[RawEntry], expect: &str) {
    let scratch = Scratch::new();
    let tar = raw_tar(entries).expect("raw tar");
    let got = match unpack_layer(tar.as_slice(), &scratch.layer()) {
        Ok(diff_id) => {
            assert_eq!(
                diff_id,
                format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
            );
            render(&scratch.layer())
        }
        Err(ImageError::UnsafeEntry { .. }) => "unsafe".to_string(),
        Err(ImageError::BadArchive(_)) => "bad archive".to_string(),
        Err(e) => format!("error: {e}"),
    };
    assert_eq!(got.trim(), expect.trim(), "entries: {entries:?}");
    // Whatever the outcome, nothing may appear next to the layer.
    let outside: Vec<_> = fs::read_dir(scratch.outside())
        .expect("read outside")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        outside,
        vec!["layer".to_string()],
        "something was written outside the layer"
    );
}

#[test]
fn unsafe_entries_are_rejected_and_nothing_is_written_outside() {
    let host_target = std::env::temp_dir().join(format!("hangar-escape-{}", std::process::id()));
    let host = host_target.display().to_string();
    let cases: Vec<Vec<RawEntry>> = vec![
        vec![RawEntry::file(&format!("{host}/abs"), b"x")],
        vec![RawEntry::file("/abs-root-file", b"x")],
        vec![RawEntry::file("../outside", b"x")],
        vec![RawEntry::file("a/../../outside", b"x")],
        vec![RawEntry::file("./../outside", b"x")],
        // A symlink to the parent, then a write through it.
        vec![
            RawEntry::symlink("up", ".."),
            RawEntry::file("up/outside", b"x"),
        ],
        // A symlink to an absolute host directory, then a write through it.
        vec![
            RawEntry::symlink("host", &host),
            RawEntry::file("host/evil", b"x"),
        ],
        vec![
            RawEntry::dir("d"),
            RawEntry::symlink("d/link", "/"),
            RawEntry::file("d/link/tmp/evil", b"x"),
        ],
        // Hard links that escape, are absolute, or point at nothing in the layer.
        vec![RawEntry::hardlink("passwd", "../../../../etc/passwd")],
        vec![RawEntry::hardlink("passwd", "/etc/passwd")],
        vec![RawEntry::hardlink("ghost", "not-in-layer")],
        vec![
            RawEntry::symlink("etc", "/etc"),
            RawEntry::hardlink("pw", "etc/passwd"),
        ],
        // Device nodes.
        vec![RawEntry::special("dev/sda", EntryType::Char)],
        vec![RawEntry::special("dev/sda", EntryType::Block)],
        // A whiteout that names no file or the parent.
        vec![RawEntry::file("a/.wh...", b"")],
    ];
    for entries in &cases {
        check(entries, "unsafe");
        assert!(
            !host_target.exists(),
            "{} was created by {entries:?}",
            host_target.display()
        );
    }
    assert!(!Path::new("/abs-root-file").exists());
    assert!(!Path::new("/tmp/evil").exists());
}

#[test]
fn regular_layer_tree() {
    check(
        &[
            RawEntry::dir("./"),
            RawEntry::dir("etc"),
            RawEntry {
                mode: 0o600,
                ..RawEntry::file("etc/secret", b"s3cret")
            },
            RawEntry::file("./etc/motd", b"hello"),
            RawEntry::symlink("etc/issue", "motd"),
            RawEntry::symlink("abs", "/etc/motd"),
            RawEntry::hardlink("etc/motd2", "etc/motd"),
            RawEntry {
                mode: 0o1777,
                ..RawEntry::dir("tmp")
            },
            RawEntry::file("deep/er/file", b"implicit parents"),
            RawEntry::special("run/fifo", EntryType::Fifo),
            // A later entry replaces an earlier one (file by symlink, symlink by directory).
            RawEntry::file("replaced", b"old"),
            RawEntry::symlink("replaced", "etc"),
            RawEntry::symlink("was-link", "/"),
            RawEntry::dir("was-link"),
            RawEntry::file("was-link/inside", b"ok"),
        ],
        "
l abs -> /etc/motd
d deep 755
d deep/er 755
f deep/er/file 644 0:0 implicit parents
d etc 755
l etc/issue -> motd
f etc/motd 644 0:0 hello
h etc/motd2 = etc/motd
f etc/secret 600 0:0 s3cret
l replaced -> etc
d run 755
p run/fifo
d tmp 1777
d was-link 755
f was-link/inside 644 0:0 ok",
    );
}

#[test]
fn whiteouts_become_overlay_devices_and_xattrs() {
    if !is_root() {
        println!(
            "skipping whiteouts_become_overlay_devices_and_xattrs: needs root for mknod and trusted.* xattrs"
        );
        return;
    }
    check(
        &[
            RawEntry::dir("etc"),
            RawEntry::file("etc/.wh.passwd", b""),
            RawEntry::file(".wh.gone-dir", b""),
            RawEntry::dir("var/cache"),
            RawEntry::file("var/cache/.wh..wh..opq", b""),
            RawEntry::file("var/cache/new", b"n"),
            // aufs bookkeeping is ignored.
            RawEntry::file(".wh..wh.plnk/123.456", b""),
        ],
        "
d etc 755
c etc/passwd 0:0
c gone-dir 0:0
d var 755
d var/cache 755 opaque
f var/cache/new 644 0:0 n",
    );
}

#[test]
fn compressed_layers_stream_and_report_the_uncompressed_diff_id() {
    let tar = raw_tar(&[RawEntry::file("a", b"same content")]).expect("tar");
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let gzip = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&tar).expect("gzip");
        enc.finish().expect("gzip")
    };
    let zstd = zstd::stream::encode_all(tar.as_slice(), 3).expect("zstd");
    for (name, blob) in [("none", tar.clone()), ("gzip", gzip), ("zstd", zstd)] {
        let scratch = Scratch::new();
        let got = unpack_layer(blob.as_slice(), &scratch.layer()).expect(name);
        assert_eq!(got, diff_id, "{name}");
        assert_eq!(
            fs::read(scratch.layer().join("a")).expect("read"),
            b"same content",
            "{name}"
        );
    }
}

#[test]
fn truncated_layer_is_a_bad_archive() {
    let tar = raw_tar(&[RawEntry::file("a", &[7u8; 5000])]).expect("tar");
    let scratch = Scratch::new();
    let err = unpack_layer(&tar[..1500], &scratch.layer()).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive(_)), "{err:?}");
}
