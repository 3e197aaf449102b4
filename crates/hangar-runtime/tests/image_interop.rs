//! Archives written by a real tool, not only by our builder: `skopeo` converts an
//! oci-archive of ours into a `docker-archive` (docker save format) and an OCI layout
//! directory, and the store imports both.
//!
//! CI must `apt-get install -y skopeo`; the test fails loudly when it is missing.

use std::path::Path;
use std::process::Command;

use hangar_runtime::image::ImageStore;
use hangar_runtime::image::build::{Compression, busybox_image};

fn skopeo_copy(from: &str, to: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", from, to])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running skopeo failed ({e}): the interop test needs `apt-get install -y skopeo`"
            )
        });
    assert!(
        out.status.success(),
        "skopeo copy {from} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn archives_written_by_skopeo_import() {
    let work = tempfile::tempdir().expect("tempdir");
    let ours = work.path().join("ours.tar");
    busybox_image()
        .layer_compression(Compression::Gzip)
        .write_oci_archive(&ours, Some("busybox:ours"))
        .expect("write");
    let docker = work.path().join("docker.tar");
    let layout = work.path().join("layout");
    skopeo_copy(
        &format!("oci-archive:{}", ours.display()),
        &format!(
            "docker-archive:{}:docker.io/skopeo/busybox:docker",
            docker.display()
        ),
    );
    skopeo_copy(
        &format!("oci-archive:{}", ours.display()),
        &format!("oci:{}:busybox:layout", layout.display()),
    );

    let store = ImageStore::open(&work.path().join("images")).expect("open");
    let from_docker = store
        .import_path(&docker, None)
        .expect("import docker-archive");
    assert_eq!(
        from_docker[0].name.as_deref(),
        Some("skopeo/busybox:docker")
    );
    let from_layout = store.import_path(&layout, None).expect("import oci layout");
    // skopeo records `busybox:layout` in org.opencontainers.image.ref.name.
    let layout_name = from_layout[0].name.clone().expect("layout name");
    assert_eq!(layout_name, "busybox:layout");

    for reference in ["skopeo/busybox:docker", layout_name.as_str()] {
        let resolved = store.resolve(reference).expect("resolve");
        let layer = &resolved.layers[0];
        assert_eq!(
            std::fs::read(layer.join("bin/busybox")).expect("busybox"),
            std::fs::read("/bin/busybox").expect("host busybox"),
            "{reference}"
        );
        assert_eq!(
            std::fs::read_link(layer.join("bin/sh")).expect("sh"),
            Path::new("busybox")
        );
        assert_eq!(resolved.config.cmd, ["sh"], "{reference}");
    }
}
