//! The image store end to end on the local side: import of each format, resolve by each
//! reference form, layers unpacked once, digest and diff_id verification, unsafe layers,
//! list/remove, gc, concurrent imports, and (as root) the overlayfs view of whiteouts.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use hangar_runtime::image::build::{Compression, OciArchiveBuilder, RawEntry, raw_tar};
use hangar_runtime::image::{ImageError, ImageStore};
use sha2::{Digest, Sha256};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct Env {
    dir: tempfile::TempDir,
    store: ImageStore,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(&dir.path().join("images")).expect("open store");
        Env { dir, store }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("images")
    }
    fn count(&self, sub: &str) -> usize {
        fs::read_dir(self.root().join(sub))
            .expect("read_dir")
            .count()
    }
}

#[derive(Clone, Copy, Debug)]
enum Format {
    OciArchive,
    DockerSave,
    OciLayoutDir,
}

/// Writes `builder` in `format` and imports it (by path).
fn write_and_import(
    env: &Env,
    builder: &OciArchiveBuilder,
    format: Format,
    archive_name: Option<&str>,
    tag: Option<&str>,
) -> Result<Vec<hangar_runtime::image::ImageSummary>, ImageError> {
    let out = env.path(&format!("{format:?}-{}", rand_suffix()));
    match format {
        Format::OciArchive => builder.write_oci_archive(&out, archive_name),
        Format::DockerSave => builder.write_docker_save(&out, archive_name),
        Format::OciLayoutDir => builder.write_oci_layout_dir(&out, archive_name),
    }
    .expect("write image");
    env.store.import_path(&out, tag)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn app_image() -> OciArchiveBuilder {
    OciArchiveBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", b"lower\n", 0o644)
        .file("bin/tool", b"#!/bin/sh\n", 0o755)
        .new_layer()
        .file("etc/motd", b"upper\n", 0o600)
        .symlink("etc/issue", "motd")
        .entrypoint(["/bin/tool"])
        .cmd(["--serve", "8080"])
        .env("MODE", "test")
        .working_dir("/srv")
        .user("65534:65534")
        .stop_signal("SIGINT")
        .label("team", "core")
        .expose("8080/tcp")
}

#[test]
fn import_each_format_and_compression_takes_the_name_from_the_archive() {
    let cases = [
        (Format::OciArchive, Compression::None),
        (Format::OciArchive, Compression::Gzip),
        (Format::OciArchive, Compression::Zstd),
        (Format::OciLayoutDir, Compression::Gzip),
        (Format::OciLayoutDir, Compression::Zstd),
        (Format::DockerSave, Compression::None),
    ];
    for (format, compression) in cases {
        let env = Env::new();
        let builder = app_image().layer_compression(compression);
        let imported = write_and_import(&env, &builder, format, Some("team/app:v1"), None)
            .unwrap_or_else(|e| panic!("{format:?} {compression:?}: {e}"));
        assert_eq!(imported.len(), 1);
        let summary = &imported[0];
        assert_eq!(summary.name.as_deref(), Some("team/app:v1"), "{format:?}");
        assert_eq!(summary.layers, 2);
        assert_eq!(summary.created.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert!(summary.size > 0);

        let resolved = env.store.resolve("team/app:v1").expect("resolve");
        assert_eq!(resolved.manifest_digest, summary.manifest_digest);
        assert_eq!(resolved.name.as_deref(), Some("team/app:v1"));
        assert_eq!(resolved.layers.len(), 2);
        let [lower, upper] = resolved.layers.as_slice() else {
            unreachable!()
        };
        assert_eq!(
            fs::read(lower.join("etc/motd")).expect("lower motd"),
            b"lower\n"
        );
        assert_eq!(
            fs::read(upper.join("etc/motd")).expect("upper motd"),
            b"upper\n"
        );
        assert_eq!(
            fs::read_link(upper.join("etc/issue")).expect("link"),
            Path::new("motd")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(lower.join("bin/tool"))
            .expect("tool")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{format:?}: modes are preserved");
        let c = &resolved.config;
        assert_eq!(c.entrypoint, ["/bin/tool"]);
        assert_eq!(c.cmd, ["--serve", "8080"]);
        assert!(c.env.contains(&"MODE=test".to_string()));
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.user, "65534:65534");
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.labels.get("team").map(String::as_str), Some("core"));
        assert_eq!(c.exposed_ports, ["8080/tcp"]);
    }
}

#[test]
fn tag_overrides_the_archive_name_and_unnamed_archives_stay_untagged() {
    for format in [Format::OciArchive, Format::DockerSave, Format::OciLayoutDir] {
        let env = Env::new();
        let imported =
            write_and_import(&env, &app_image(), format, Some("app:v1"), Some("renamed"))
                .expect("import with tag");
        assert_eq!(
            imported[0].name.as_deref(),
            Some("renamed:latest"),
            "{format:?}"
        );
        assert!(env.store.resolve("renamed").is_ok());
        assert!(matches!(
            env.store.resolve("app:v1"),
            Err(ImageError::NotFound(_))
        ));

        let unnamed = write_and_import(
            &env,
            &app_image().created("2026-02-02T00:00:00Z"),
            format,
            None,
            None,
        )
        .expect("import unnamed");
        assert_eq!(unnamed[0].name, None, "{format:?}");
        let digest = &unnamed[0].manifest_digest;
        assert_eq!(
            env.store
                .resolve(digest)
                .expect("by digest")
                .manifest_digest,
            *digest
        );
        let listed = env.store.list().expect("list");
        assert!(
            listed
                .iter()
                .any(|s| s.name.is_none() && s.manifest_digest == *digest)
        );

        let err = write_and_import(&env, &app_image(), format, None, Some("Bad/Name")).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn import_reader_takes_compressed_and_plain_streams() {
    let env = Env::new();
    let built = app_image()
        .write_oci_archive(&env.path("a.tar"), Some("stream:1"))
        .expect("write");
    let plain = fs::read(env.path("a.tar")).expect("read");
    let imported = env
        .store
        .import_reader(plain.as_slice(), None)
        .expect("plain stream");
    assert_eq!(imported[0].manifest_digest, built.manifest_digest);

    let gz = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&plain).expect("gz");
        enc.finish().expect("gz")
    };
    let imported = env
        .store
        .import_reader(gz.as_slice(), Some("stream:gz"))
        .expect("gzip stream");
    assert_eq!(imported[0].manifest_digest, built.manifest_digest);
    assert_eq!(env.count("tmp"), 0, "the staging directory is removed");
}

#[test]
fn bad_archives_are_rejected() {
    let env = Env::new();
    fs::write(env.path("junk"), b"this is not a tar archive at all").expect("write");
    let err = env.store.import_path(&env.path("junk"), None).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive(_)), "{err:?}");

    let tar = raw_tar(&[RawEntry::file("hello.txt", b"hi")]).expect("tar");
    let err = env.store.import_reader(tar.as_slice(), None).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive(_)), "{err:?}");
    assert!(err.to_string().contains("neither an OCI layout"), "{err}");

    let tar = raw_tar(&[RawEntry::file("../manifest.json", b"[]")]).expect("tar");
    let err = env.store.import_reader(tar.as_slice(), None).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive(_)), "{err:?}");
    assert!(!env.root().join("manifest.json").exists());
    assert!(env.store.list().expect("list").is_empty());
}

#[test]
fn resolve_by_every_reference_form_and_not_found() {
    let env = Env::new();
    let built = app_image()
        .write_oci_archive(&env.path("a.tar"), Some("busybox"))
        .expect("write");
    env.store
        .import_path(&env.path("a.tar"), None)
        .expect("import");
    let d = &built.manifest_digest;
    for (reference, name) in [
        ("busybox", Some("busybox:latest")),
        ("busybox:latest", Some("busybox:latest")),
        (&format!("busybox@{d}") as &str, None),
        (d.as_str(), None),
    ] {
        let resolved = env
            .store
            .resolve(reference)
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(resolved.manifest_digest, *d, "{reference}");
        assert_eq!(resolved.name.as_deref(), name, "{reference}");
        assert_eq!(resolved.reference, reference);
        assert_eq!(resolved.config_digest, built.config_digest);
    }
    let missing = format!("sha256:{}", "0".repeat(64));
    for reference in [
        "busybox:1.0",
        "other",
        "registry.example/busybox",
        &missing,
        &format!("other@{missing}"),
    ] {
        let err = env.store.resolve(reference).unwrap_err();
        assert!(
            matches!(err, ImageError::NotFound(_)),
            "{reference}: {err:?}"
        );
        assert!(err.to_string().contains("not found"), "{err}");
    }
    for reference in ["UPPER/case", "a//b", ":tag", "", "name@sha256:short"] {
        let err = env.store.resolve(reference).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{reference:?}: {err:?}"
        );
    }
}

#[test]
fn layers_are_unpacked_once_and_shared_between_images() {
    let env = Env::new();
    let base = OciArchiveBuilder::new().file("base", b"shared", 0o644);
    base.clone()
        .new_layer()
        .file("one", b"1", 0o644)
        .write_oci_archive(&env.path("1.tar"), Some("one"))
        .expect("w");
    base.new_layer()
        .file("two", b"2", 0o644)
        .write_oci_archive(&env.path("2.tar"), Some("two"))
        .expect("w");
    env.store
        .import_path(&env.path("1.tar"), None)
        .expect("import one");
    env.store
        .import_path(&env.path("2.tar"), None)
        .expect("import two");
    let one = env.store.resolve("one").expect("resolve one");
    // A marker proves the directory is not recreated on the next resolve.
    fs::write(one.layers[0].join(".marker"), b"").expect("marker");
    let again = env.store.resolve("one").expect("resolve again");
    assert_eq!(again.layers, one.layers);
    assert!(
        again.layers[0].join(".marker").exists(),
        "the layer was unpacked again"
    );
    let two = env.store.resolve("two").expect("resolve two");
    assert_eq!(two.layers[0], one.layers[0], "the base layer is shared");
    assert_ne!(two.layers[1], one.layers[1]);
    assert_eq!(env.count("layers/sha256"), 3);
    assert!(one.layers[0].starts_with(env.root().join("layers/sha256")));
}

#[test]
fn concurrent_resolves_unpack_a_layer_once() {
    let env = Env::new();
    OciArchiveBuilder::new()
        .file("big", &vec![42u8; 4 << 20], 0o644)
        .write_oci_archive(&env.path("a.tar"), Some("big"))
        .expect("write");
    env.store
        .import_path(&env.path("a.tar"), None)
        .expect("import");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.store.resolve("big")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let dirs: HashSet<_> = results
        .into_iter()
        .map(|r| r.expect("resolve").layers)
        .collect();
    assert_eq!(dirs.len(), 1);
    assert_eq!(env.count("layers/sha256"), 1);
    assert_eq!(env.count("tmp"), 0);
}

#[test]
fn blob_digest_mismatch_is_rejected_and_nothing_is_stored() {
    let env = Env::new();
    // put_blob with a wrong expected digest.
    let wrong = sha(b"something else");
    let err = env
        .store
        .put_blob(&b"content"[..], Some(&wrong))
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(env.store.blob_path(&wrong).is_none());
    assert!(env.store.blob_path(&sha(b"content")).is_none());
    assert_eq!(env.count("blobs/sha256"), 0);
    assert_eq!(env.count("tmp"), 0);
    // And with the right one.
    let digest = env
        .store
        .put_blob(&b"content"[..], Some(&sha(b"content")))
        .expect("put");
    assert_eq!(
        fs::read(env.store.blob_path(&digest).expect("path")).expect("read"),
        b"content"
    );
    assert!(env.store.blob_path("sha256:../../etc/passwd").is_none());

    // A layout whose layer blob was tampered with.
    let layout = env.path("layout");
    let built = app_image()
        .write_oci_layout_dir(&layout, Some("tampered:1"))
        .expect("write");
    let layer_hex = built.layer_digests[1].trim_start_matches("sha256:");
    let layer_path = layout.join("blobs/sha256").join(layer_hex);
    let mut bytes = fs::read(&layer_path).expect("read layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&layer_path, bytes).expect("tamper");
    let err = env.store.import_path(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(layer_hex), "{err}");
    assert!(env.store.blob_path(&built.layer_digests[1]).is_none());
    assert!(env.store.blob_path(&built.manifest_digest).is_none());
    assert!(env.store.list().expect("list").is_empty());
    assert_eq!(env.count("tmp"), 0);
}

/// Writes an OCI layout by hand whose config claims `diff_id` for the one layer `tar`.
fn layout_with_diff_id(dir: &Path, tar: &[u8], diff_id: &str, name: &str) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| {
        let digest = sha(bytes);
        fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).expect("write blob");
        digest
    };
    let layer = put(tar);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .expect("json");
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": tar.len()}],
    }))
    .expect("json");
    let manifest_digest = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": name},
    }]});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
}

#[test]
fn diff_id_mismatch_is_rejected_at_import_and_leaves_no_layer() {
    let env = Env::new();
    let tar = raw_tar(&[RawEntry::file("f", b"data")]).expect("tar");
    let claimed = sha(b"not the tar");
    layout_with_diff_id(&env.path("layout"), &tar, &claimed, "liar:1");
    // Import unpacks every layer, so the lie is caught before the name becomes visible.
    let err = env
        .store
        .import_path(&env.path("layout"), None)
        .unwrap_err();
    assert!(matches!(
        env.store.resolve("liar:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(
        matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == claimed),
        "{err:?}"
    );
    assert_eq!(env.count("layers/sha256"), 0);
    assert_eq!(env.count("tmp"), 0);
}

#[test]
fn unsafe_layer_is_rejected_through_the_store_with_nothing_written_outside() {
    let env = Env::new();
    let evil = raw_tar(&[
        RawEntry::file("ok", b"fine"),
        RawEntry::symlink("up", "../../.."),
        RawEntry::file("up/escaped", b"x"),
    ])
    .expect("tar");
    OciArchiveBuilder::new()
        .file("base", b"b", 0o644)
        .raw_layer(evil)
        .write_oci_archive(&env.path("evil.tar"), Some("evil"))
        .expect("write");
    // Import unpacks every layer, so the unsafe one is refused and no name becomes visible.
    let err = env
        .store
        .import_path(&env.path("evil.tar"), None)
        .unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err:?}");
    assert!(matches!(
        env.store.resolve("evil"),
        Err(ImageError::NotFound(_))
    ));
    assert!(err.to_string().contains("up/escaped"), "{err}");
    assert!(!env.dir.path().join("escaped").exists());
    assert!(!env.root().join("escaped").exists());
    assert!(!Path::new("/escaped").exists());
    // The safe base layer was unpacked; the rejected one left nothing.
    assert_eq!(env.count("layers/sha256"), 1);
    assert_eq!(env.count("tmp"), 0);
}

#[test]
fn list_and_remove() {
    let env = Env::new();
    write_and_import(&env, &app_image(), Format::OciArchive, Some("b:1"), None).expect("import b");
    let a = write_and_import(
        &env,
        &app_image().created("2026-03-03T00:00:00Z"),
        Format::DockerSave,
        Some("a:1"),
        None,
    )
    .expect("import a");
    let names = |env: &Env| -> Vec<Option<String>> {
        env.store
            .list()
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(
        names(&env),
        [Some("a:1".to_string()), Some("b:1".to_string())]
    );
    env.store.remove("b:1").expect("remove b:1");
    assert!(matches!(
        env.store.remove("b:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        env.store.remove("nothere"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        env.store.remove("Bad//x"),
        Err(ImageError::InvalidReference { .. })
    ));
    env.store
        .remove(&a[0].manifest_digest)
        .expect("remove by digest");
    let left = names(&env);
    assert!(
        !left.contains(&Some("a:1".to_string())) && !left.contains(&Some("b:1".to_string())),
        "{left:?}"
    );
}

#[test]
fn gc_removes_exactly_the_unreferenced_blobs_and_layers() {
    let env = Env::new();
    let base = OciArchiveBuilder::new().file("base", b"shared", 0o644);
    let keep = base
        .clone()
        .new_layer()
        .file("keep", b"k", 0o644)
        .write_oci_archive(&env.path("k.tar"), Some("keep"))
        .expect("w");
    let drop = base
        .clone()
        .new_layer()
        .file("drop", b"d", 0o644)
        .write_oci_archive(&env.path("d.tar"), Some("drop"))
        .expect("w");
    let used = base
        .new_layer()
        .file("used", b"u", 0o644)
        .write_oci_archive(&env.path("u.tar"), None)
        .expect("w");
    for f in ["k.tar", "d.tar", "u.tar"] {
        env.store.import_path(&env.path(f), None).expect("import");
    }
    for r in ["keep", "drop", used.manifest_digest.as_str()] {
        env.store.resolve(r).expect("resolve");
    }
    // 3 manifests + 3 configs + shared base + 3 top layers; 4 unpacked layers.
    assert_eq!(env.count("blobs/sha256"), 10);
    assert_eq!(env.count("layers/sha256"), 4);
    env.store.remove("drop").expect("remove");

    let in_use: HashSet<String> = [used.manifest_digest.clone()].into();
    let report = env.store.gc(&in_use).expect("gc");
    assert_eq!(
        (report.removed_blobs, report.removed_layers),
        (3, 1),
        "{report:?}"
    );
    assert!(report.freed_bytes > 0);
    for d in [
        &drop.manifest_digest,
        &drop.config_digest,
        &drop.layer_digests[1],
    ] {
        assert!(env.store.blob_path(d).is_none(), "{d} should be gone");
    }
    for d in [
        &keep.manifest_digest,
        &keep.layer_digests[0],
        &used.manifest_digest,
        &used.layer_digests[1],
    ] {
        assert!(env.store.blob_path(d).is_some(), "{d} should be kept");
    }
    assert!(env.store.resolve("keep").is_ok());
    assert!(env.store.resolve(&used.manifest_digest).is_ok());
    assert!(
        !env.root()
            .join("layers/sha256")
            .join(drop.diff_ids[1].trim_start_matches("sha256:"))
            .exists()
    );

    // Nothing left to collect: a second gc removes nothing.
    assert_eq!(env.store.gc(&in_use).expect("gc").removed_blobs, 0);
    // Once no machine uses the untagged image, it goes too.
    let report = env.store.gc(&HashSet::new()).expect("gc");
    assert_eq!(
        (report.removed_blobs, report.removed_layers),
        (3, 1),
        "{report:?}"
    );
    assert!(matches!(
        env.store.resolve(&used.manifest_digest),
        Err(ImageError::NotFound(_))
    ));
    assert!(env.store.resolve("keep").is_ok());
}

#[test]
fn concurrent_imports_keep_every_tag() {
    let env = Env::new();
    let paths: Vec<PathBuf> = (0..8)
        .map(|i| {
            let path = env.path(&format!("c{i}.tar"));
            OciArchiveBuilder::new()
                .file("n", format!("{i}").as_bytes(), 0o644)
                .write_oci_archive(&path, Some(&format!("img{i}:v1")))
                .expect("write");
            path
        })
        .collect();
    std::thread::scope(|s| {
        for path in &paths {
            let store = env.store.clone();
            s.spawn(move || store.import_path(path, None).expect("import"));
        }
    });
    let mut names: Vec<String> = env
        .store
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|s| s.name)
        .collect();
    names.sort();
    let expected: Vec<String> = (0..8).map(|i| format!("img{i}:v1")).collect();
    assert_eq!(names, expected);
    // A second handle on the same root sees the same index.
    let reopened = ImageStore::open(&env.root()).expect("reopen");
    assert_eq!(reopened.list().expect("list").len(), 8);
}

/// Unmounts on drop so a failing assertion does not leave a mount behind.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

#[test]
fn overlay_of_unpacked_layers_hides_whited_out_files() {
    if !is_root() {
        println!(
            "skipping overlay_of_unpacked_layers_hides_whited_out_files: needs root to mount overlayfs"
        );
        return;
    }
    let env = Env::new();
    OciArchiveBuilder::new()
        .file("etc/a", b"a", 0o644)
        .file("etc/b", b"b", 0o644)
        .file("data/old", b"old", 0o644)
        .new_layer()
        .whiteout("etc/a")
        .opaque("data")
        .file("data/new", b"new", 0o644)
        .write_oci_archive(&env.path("wh.tar"), Some("wh"))
        .expect("write");
    env.store
        .import_path(&env.path("wh.tar"), None)
        .expect("import");
    let resolved = env.store.resolve("wh").expect("resolve");
    let merged = env.path("merged");
    fs::create_dir(&merged).expect("mkdir");
    // overlayfs lists lowerdirs top first.
    let lower: Vec<String> = resolved
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = std::ffi::CString::new(format!("lowerdir={}", lower.join(":"))).expect("cstring");
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        data.as_c_str(),
    )
    .expect("mount overlay");
    let _guard = MountGuard(merged.clone());
    assert!(!merged.join("etc/a").exists(), "the whiteout hides etc/a");
    assert_eq!(fs::read(merged.join("etc/b")).expect("etc/b"), b"b");
    assert!(
        !merged.join("data/old").exists(),
        "the opaque directory hides data/old"
    );
    assert_eq!(fs::read(merged.join("data/new")).expect("data/new"), b"new");
}

#[test]
fn an_image_index_resolves_to_the_host_platform() {
    let env = Env::new();
    let layout = env.path("multi");
    // Two images share one layout directory (blobs merge; index.json is rewritten below).
    let other = OciArchiveBuilder::new()
        .file("arch", b"other", 0o644)
        .write_oci_layout_dir(&layout, None)
        .expect("w");
    let host = OciArchiveBuilder::new()
        .file("arch", b"host", 0o644)
        .write_oci_layout_dir(&layout, None)
        .expect("w");
    let host_arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other_arch = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let size = |d: &str| {
        fs::metadata(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .expect("blob")
        .len()
    };
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.manifest_digest,
             "size": size(&other.manifest_digest), "platform": {"architecture": other_arch, "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": host.manifest_digest,
             "size": size(&host.manifest_digest), "platform": {"architecture": host_arch, "os": "linux"}},
        ],
    }))
    .expect("json");
    let nested_digest = sha(&nested);
    fs::write(
        layout
            .join("blobs/sha256")
            .join(nested_digest.trim_start_matches("sha256:")),
        &nested,
    )
    .expect("write");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested_digest, "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi:1"},
    }]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");

    let imported = env.store.import_path(&layout, None).expect("import");
    assert_eq!(imported[0].manifest_digest, host.manifest_digest);
    let resolved = env.store.resolve("multi:1").expect("resolve");
    assert_eq!(
        fs::read(resolved.layers[0].join("arch")).expect("arch"),
        b"host"
    );
    assert!(
        env.store.blob_path(&other.manifest_digest).is_none(),
        "only the host's image is stored"
    );
}

#[test]
fn gc_keeps_an_image_in_use_after_its_tag_was_removed() {
    let env = Env::new();
    let built = OciArchiveBuilder::new()
        .file("f", b"in use", 0o644)
        .write_oci_archive(&env.path("u.tar"), Some("used:1"))
        .expect("write");
    env.store
        .import_path(&env.path("u.tar"), None)
        .expect("import");
    let resolved = env.store.resolve("used:1").expect("resolve");
    env.store.remove("used:1").expect("remove tag");
    let in_use: HashSet<String> = [
        built.manifest_digest.clone(),
        format!("sha256:{}", "e".repeat(64)),
    ]
    .into();
    let report = env.store.gc(&in_use).expect("gc");
    assert_eq!(
        (report.removed_blobs, report.removed_layers),
        (0, 0),
        "{report:?}"
    );
    assert!(resolved.layers[0].join("f").exists());
    let listed = env.store.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.clone(), listed[0].manifest_digest.clone()),
        (None, built.manifest_digest.clone())
    );
    let report = env.store.gc(&HashSet::new()).expect("gc");
    assert_eq!(
        (report.removed_blobs, report.removed_layers),
        (3, 1),
        "{report:?}"
    );
}
