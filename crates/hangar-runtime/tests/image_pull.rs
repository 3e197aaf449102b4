//! Pulling from a real registry on loopback: Debian's `docker-registry` (distribution 2.8),
//! with images pushed by `skopeo` from archives our builder wrote. Anonymous and basic
//! auth, pull by tag and by digest, not found, wrong password.
//!
//! CI must `apt-get install -y docker-registry skopeo apache2-utils`; these tests fail
//! loudly when the tools are missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hangar_runtime::image::build::{Compression, OciArchiveBuilder, busybox_image};
use hangar_runtime::image::{ImageError, ImageStore, PullAuth};

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: the pull tests need `apt-get install -y docker-registry skopeo apache2-utils`"
    );
    Command::new(name)
}

/// A `docker-registry` process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(credentials: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = credentials {
            let out = tool("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hangar-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        // The registry logs every 404 at level error; keep that out of the test output.
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("create log");
        let child = tool("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry {
            child,
            port,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    /// Polls `GET /v2/` until the registry answers (200 or 401), for at most 20 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(self._dir.path().join("registry.log"))
                    .unwrap_or_default();
                panic!("docker-registry exited early: {status}\n{log}");
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
                let mut answer = [0u8; 12];
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && answer.starts_with(b"HTTP/1.")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes an oci-archive with skopeo.
    fn push(&self, archive: &Path, repo_tag: &str, credentials: Option<(&str, &str)>) {
        let mut cmd = tool("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
        if let Some((user, password)) = credentials {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = cmd
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn write_archive(dir: &Path, builder: &OciArchiveBuilder) -> PathBuf {
    let path = dir.join("image.tar");
    builder
        .write_oci_archive(&path, Some("pushed:v1"))
        .expect("write archive");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_anonymous_by_tag_and_digest() {
    let registry = Registry::start(None);
    let work = tempfile::tempdir().expect("tempdir");
    let archive = write_archive(
        work.path(),
        &busybox_image().layer_compression(Compression::Zstd),
    );
    registry.push(&archive, "test/busybox:v1", None);
    let store = ImageStore::open(&work.path().join("images")).expect("open");

    let reference = format!("{}/test/busybox:v1", registry.host());
    let summary = store
        .pull(&reference, PullAuth::Anonymous, false)
        .await
        .expect("pull");
    assert_eq!(summary.name.as_deref(), Some(reference.as_str()));
    assert_eq!(summary.layers, 1);

    let resolved = store.resolve(&reference).expect("resolve");
    let busybox = resolved.layers[0].join("bin/busybox");
    assert_eq!(
        std::fs::read(&busybox).expect("busybox in layer"),
        std::fs::read("/bin/busybox").expect("host busybox")
    );
    assert_eq!(
        std::fs::read_link(resolved.layers[0].join("bin/sh")).expect("sh"),
        Path::new("busybox")
    );
    assert_eq!(resolved.config.cmd, ["sh"]);

    // By digest; everything is already stored, so only the manifest is fetched.
    let by_digest = format!(
        "{}/test/busybox@{}",
        registry.host(),
        summary.manifest_digest
    );
    let again = store
        .pull(&by_digest, PullAuth::Anonymous, false)
        .await
        .expect("pull by digest");
    assert_eq!(again.manifest_digest, summary.manifest_digest);
    assert_eq!(
        store
            .resolve(&by_digest)
            .expect("resolve by digest")
            .manifest_digest,
        summary.manifest_digest
    );

    let missing = format!("{}/test/busybox:nope", registry.host());
    let err = store
        .pull(&missing, PullAuth::Anonymous, false)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");
    let missing_repo = format!("{}/no/such:v1", registry.host());
    let err = store
        .pull(&missing_repo, PullAuth::Anonymous, false)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");

    let err = store
        .pull("127.0.0.1:1/UPPER:v1", PullAuth::Anonymous, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidReference { .. }),
        "{err:?}"
    );
    let names: Vec<_> = store
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|s| s.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        std::fs::read_dir(work.path().join("images/tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_basic_auth_and_wrong_password() {
    let creds = ("hangar", "s3cret-pass");
    let registry = Registry::start(Some(creds));
    let work = tempfile::tempdir().expect("tempdir");
    let archive = write_archive(
        work.path(),
        &OciArchiveBuilder::new()
            .file("hello", b"authenticated\n", 0o644)
            .new_layer()
            .file("more", b"x", 0o644),
    );
    registry.push(&archive, "private/app:v2", Some(creds));
    let store = ImageStore::open(&work.path().join("images")).expect("open");
    let reference = format!("{}/private/app:v2", registry.host());

    let err = store
        .pull(&reference, PullAuth::Anonymous, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Unauthorized { .. }),
        "anonymous: {err:?}"
    );

    let wrong = PullAuth::Basic {
        username: creds.0.into(),
        password: "wrong".into(),
    };
    let err = store.pull(&reference, wrong, false).await.unwrap_err();
    assert!(
        matches!(err, ImageError::Unauthorized { .. }),
        "wrong password: {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("refused the credentials") && message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(
        !message.contains("wrong"),
        "the password must not appear in errors: {message}"
    );
    assert!(store.list().expect("list").is_empty());

    let right = PullAuth::Basic {
        username: creds.0.into(),
        password: creds.1.into(),
    };
    let summary = store
        .pull(&reference, right, false)
        .await
        .expect("pull with credentials");
    assert_eq!(summary.layers, 2);
    let resolved = store.resolve(&reference).expect("resolve");
    assert_eq!(
        std::fs::read(resolved.layers[0].join("hello")).expect("hello"),
        b"authenticated\n"
    );
}

#[tokio::test]
async fn unreachable_registry_is_a_registry_error_naming_it() {
    // A loopback port where nothing listens: the connection is refused at once.
    let work = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(&work.path().join("images")).expect("open");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = store
        .pull(
            &format!("localhost:{port}/nothing:v1"),
            PullAuth::Anonymous,
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains("localhost"), "{err}");
}
