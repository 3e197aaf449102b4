//! Builds real, spec-conforming test images: OCI layout directories, `oci-archive` tars and
//! `docker save` tars. Not test-only: other crates' tests use it to make images without a
//! registry (see [`busybox_image`]).
//!
//! ```no_run
//! use hangar_runtime::image::build::{Compression, OciArchiveBuilder};
//! # fn main() -> std::io::Result<()> {
//! OciArchiveBuilder::new()
//!     .file("etc/motd", b"hello\n", 0o644)
//!     .symlink("etc/issue", "motd")
//!     .cmd(["cat", "/etc/motd"])
//!     .layer_compression(Compression::Zstd)
//!     .write_oci_archive("/tmp/motd.tar".as_ref(), Some("motd:v1"))?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use tar::{EntryType, Header};

use super::oci::{self, host_arch};
use super::sha256_bytes;

/// How layers are compressed in the built image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// Gzip (`+gzip`).
    #[default]
    Gzip,
    /// Zstandard (`+zstd`).
    Zstd,
}

/// One entry of a raw tar, written without the path checks the tar crate's builder
/// applies, so tests can make hostile layers (absolute paths, `..`, devices).
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// The path exactly as stored in the header (at most 100 bytes).
    pub path: String,
    /// The entry type.
    pub kind: EntryType,
    /// The link target for symlinks and hard links.
    pub link: Option<String>,
    /// File contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

impl RawEntry {
    /// A regular file.
    pub fn file(path: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind: EntryType::Regular,
            link: None,
            data: data.to_vec(),
            mode: 0o644,
        }
    }
    /// A directory.
    pub fn dir(path: &str) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind: EntryType::Directory,
            link: None,
            data: Vec::new(),
            mode: 0o755,
        }
    }
    /// A symlink.
    pub fn symlink(path: &str, target: &str) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind: EntryType::Symlink,
            link: Some(target.into()),
            data: Vec::new(),
            mode: 0o777,
        }
    }
    /// A hard link.
    pub fn hardlink(path: &str, target: &str) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind: EntryType::Link,
            link: Some(target.into()),
            data: Vec::new(),
            mode: 0o644,
        }
    }
    /// Any other type with no data (devices, FIFOs).
    pub fn special(path: &str, kind: EntryType) -> RawEntry {
        RawEntry {
            path: path.into(),
            kind,
            link: None,
            data: Vec::new(),
            mode: 0o600,
        }
    }
}

/// Writes a tar of raw entries (header fields set byte by byte; no path validation).
pub fn raw_tar(entries: &[RawEntry]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = Header::new_old();
        {
            let old = header.as_old_mut();
            let path = entry.path.as_bytes();
            if path.len() > old.name.len() {
                return Err(io::Error::other(format!(
                    "raw tar path {} is longer than 100 bytes",
                    entry.path
                )));
            }
            old.name[..path.len()].copy_from_slice(path);
            if let Some(link) = &entry.link {
                let link = link.as_bytes();
                if link.len() > old.linkname.len() {
                    return Err(io::Error::other(
                        "raw tar link target is longer than 100 bytes",
                    ));
                }
                old.linkname[..link.len()].copy_from_slice(link);
            }
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&entry.data);
        let pad = (512 - entry.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    Ok(out)
}

#[derive(Debug, Clone)]
enum BuildEntry {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    HostFile {
        path: String,
        host: PathBuf,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    Dir {
        path: String,
        mode: u32,
    },
}

#[derive(Debug, Clone)]
enum LayerSpec {
    Entries(Vec<BuildEntry>),
    Raw(Vec<u8>),
}

/// What a build produced: the digests tests assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Digest of the config.
    pub config_digest: String,
    /// Digests of the (possibly compressed) layer blobs, lowest first.
    pub layer_digests: Vec<String>,
    /// diff_ids of the layers, lowest first.
    pub diff_ids: Vec<String>,
}

/// A member of a written archive: its path and contents.
type ArchiveFile = (String, Vec<u8>);

struct Blobs {
    image: BuiltImage,
    manifest: Vec<u8>,
    config: Vec<u8>,
    /// (digest, compressed bytes, uncompressed tar)
    layers: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// Builds an image from files in memory and on the host.
#[derive(Debug, Clone)]
pub struct OciArchiveBuilder {
    layers: Vec<LayerSpec>,
    compression: Compression,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    stop_signal: Option<String>,
    labels: BTreeMap<String, String>,
    exposed_ports: Vec<String>,
    created: String,
}

impl Default for OciArchiveBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl OciArchiveBuilder {
    /// An image with one empty layer, gzip compression and a fixed creation time.
    pub fn new() -> Self {
        OciArchiveBuilder {
            layers: vec![LayerSpec::Entries(Vec::new())],
            compression: Compression::Gzip,
            entrypoint: None,
            cmd: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            user: None,
            stop_signal: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn push(mut self, entry: BuildEntry) -> Self {
        match self.layers.last_mut() {
            Some(LayerSpec::Entries(entries)) => entries.push(entry),
            _ => self.layers.push(LayerSpec::Entries(vec![entry])),
        }
        self
    }

    /// Adds a file with the given contents and mode to the current layer.
    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.push(BuildEntry::File {
            path: path.into(),
            data: data.to_vec(),
            mode,
        })
    }

    /// Adds a copy of a host file to the current layer (read when the image is written).
    pub fn host_file(self, path: &str, host_path: &Path, mode: u32) -> Self {
        self.push(BuildEntry::HostFile {
            path: path.into(),
            host: host_path.to_path_buf(),
            mode,
        })
    }

    /// Adds a symlink.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(BuildEntry::Symlink {
            path: path.into(),
            target: target.into(),
        })
    }

    /// Adds a hard link to an earlier file of the same layer.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(BuildEntry::HardLink {
            path: path.into(),
            target: target.into(),
        })
    }

    /// Adds a directory.
    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.push(BuildEntry::Dir {
            path: path.into(),
            mode,
        })
    }

    /// Deletes `path` of a lower layer (writes the `.wh.<name>` whiteout entry).
    pub fn whiteout(self, path: &str) -> Self {
        let path = Path::new(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let wh = path.with_file_name(format!(".wh.{name}"));
        self.file(&wh.to_string_lossy(), b"", 0o644)
    }

    /// Hides the lower layers' contents of directory `dir` (writes `.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        let marker = Path::new(dir).join(".wh..wh..opq");
        self.file(&marker.to_string_lossy(), b"", 0o644)
    }

    /// Starts a new layer; later entries go into it.
    pub fn new_layer(mut self) -> Self {
        self.layers.push(LayerSpec::Entries(Vec::new()));
        self
    }

    /// Adds a pre-made uncompressed layer tar (e.g. from [`raw_tar`]) as its own layer.
    pub fn raw_layer(mut self, tar: Vec<u8>) -> Self {
        self.layers.push(LayerSpec::Raw(tar));
        self
    }

    /// Sets the compression of every layer.
    pub fn layer_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets `ENTRYPOINT`.
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.entrypoint = Some(strings(args));
        self
    }

    /// Sets `CMD`.
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.cmd = Some(strings(args));
        self
    }

    /// Adds an `ENV` entry (`KEY=VALUE`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|e| e.split('=').next() != Some(key));
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Sets `WORKDIR`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Sets `USER`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets `STOPSIGNAL`.
    pub fn stop_signal(mut self, signal: &str) -> Self {
        self.stop_signal = Some(signal.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an exposed port, e.g. `8080/tcp`.
    pub fn expose(mut self, port: &str) -> Self {
        self.exposed_ports.push(port.into());
        self
    }

    /// Sets the config's `created` time (RFC 3339); different times make different images.
    pub fn created(mut self, created: &str) -> Self {
        self.created = created.into();
        self
    }

    fn layer_tar(entries: &[BuildEntry]) -> io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            match entry {
                BuildEntry::File { path, data, mode } => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                BuildEntry::HostFile { path, host, mode } => {
                    let data = fs::read(host).map_err(|e| {
                        io::Error::new(e.kind(), format!("reading {}: {e}", host.display()))
                    })?;
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                BuildEntry::Symlink { path, target } => {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
                BuildEntry::HardLink { path, target } => {
                    header.set_entry_type(EntryType::Link);
                    header.set_mode(0o644);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
                BuildEntry::Dir { path, mode } => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, path, io::empty())?;
                }
            }
        }
        builder.into_inner()
    }

    fn compress(&self, tar: &[u8]) -> io::Result<Vec<u8>> {
        match self.compression {
            Compression::None => Ok(tar.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar)?;
                enc.finish()
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3),
        }
    }

    fn layer_media_type(&self) -> &'static str {
        match self.compression {
            Compression::None => oci::OCI_LAYER,
            Compression::Gzip => oci::OCI_LAYER_GZIP,
            Compression::Zstd => oci::OCI_LAYER_ZSTD,
        }
    }

    fn blobs(&self) -> io::Result<Blobs> {
        let mut layers = Vec::new();
        for spec in &self.layers {
            let tar = match spec {
                LayerSpec::Entries(entries) => Self::layer_tar(entries)?,
                LayerSpec::Raw(tar) => tar.clone(),
            };
            let compressed = self.compress(&tar)?;
            layers.push((sha256_bytes(&compressed), compressed, tar));
        }
        let diff_ids: Vec<String> = layers.iter().map(|(_, _, tar)| sha256_bytes(tar)).collect();
        let mut run = serde_json::Map::new();
        run.insert("Env".into(), json!(self.env));
        if let Some(v) = &self.entrypoint {
            run.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &self.cmd {
            run.insert("Cmd".into(), json!(v));
        }
        if let Some(v) = &self.working_dir {
            run.insert("WorkingDir".into(), json!(v));
        }
        if let Some(v) = &self.user {
            run.insert("User".into(), json!(v));
        }
        if let Some(v) = &self.stop_signal {
            run.insert("StopSignal".into(), json!(v));
        }
        if !self.labels.is_empty() {
            run.insert("Labels".into(), json!(self.labels));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            run.insert("ExposedPorts".into(), serde_json::Value::Object(ports));
        }
        let config = serde_json::to_vec(&json!({
            "created": self.created,
            "architecture": host_arch(),
            "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| json!({"created": self.created, "created_by": "hangar image builder"})).collect::<Vec<_>>(),
        }))?;
        let config_digest = sha256_bytes(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_MANIFEST,
            "config": {"mediaType": oci::OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|(digest, blob, _)| json!({
                "mediaType": self.layer_media_type(), "digest": digest, "size": blob.len()
            })).collect::<Vec<_>>(),
        }))?;
        let image = BuiltImage {
            manifest_digest: sha256_bytes(&manifest),
            config_digest,
            layer_digests: layers.iter().map(|(d, _, _)| d.clone()).collect(),
            diff_ids,
        };
        Ok(Blobs {
            image,
            manifest,
            config,
            layers,
        })
    }

    /// The files of an OCI layout: `(path, contents)`.
    fn layout_files(&self, name: Option<&str>) -> io::Result<(BuiltImage, Vec<ArchiveFile>)> {
        let blobs = self.blobs()?;
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        let mut descriptor = json!({
            "mediaType": oci::OCI_MANIFEST,
            "digest": blobs.image.manifest_digest,
            "size": blobs.manifest.len(),
            "platform": {"architecture": host_arch(), "os": "linux"},
        });
        if let Some(name) = name {
            descriptor["annotations"] = json!({ oci::REF_NAME: name });
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_INDEX,
            "manifests": [descriptor],
        }))?;
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_string(), index),
            (
                format!("blobs/sha256/{}", hex(&blobs.image.manifest_digest)),
                blobs.manifest,
            ),
            (
                format!("blobs/sha256/{}", hex(&blobs.image.config_digest)),
                blobs.config,
            ),
        ];
        for (digest, blob, _) in blobs.layers {
            files.push((format!("blobs/sha256/{}", hex(&digest)), blob));
        }
        Ok((blobs.image, files))
    }

    /// Writes an OCI image layout directory (`oci-layout`, `index.json` with the
    /// `org.opencontainers.image.ref.name` annotation when `name` is given, `blobs/`).
    pub fn write_oci_layout_dir(&self, dir: &Path, name: Option<&str>) -> io::Result<BuiltImage> {
        let (image, files) = self.layout_files(name)?;
        for (path, data) in files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, data)?;
        }
        Ok(image)
    }

    /// Writes an `oci-archive` tar (an OCI layout in a tar, as `skopeo` and `buildah` make).
    pub fn write_oci_archive(&self, path: &Path, name: Option<&str>) -> io::Result<BuiltImage> {
        let (image, files) = self.layout_files(name)?;
        write_tar(path, files)?;
        Ok(image)
    }

    /// Writes a `docker save` tar: `manifest.json` with `Config`, `RepoTags` and `Layers`,
    /// `<config hex>.json` and uncompressed `<n>/layer.tar` files.
    pub fn write_docker_save(&self, path: &Path, name: Option<&str>) -> io::Result<BuiltImage> {
        let uncompressed = OciArchiveBuilder {
            compression: Compression::None,
            ..self.clone()
        };
        let blobs = uncompressed.blobs()?;
        let config_name = format!(
            "{}.json",
            blobs.image.config_digest.trim_start_matches("sha256:")
        );
        let layer_names: Vec<String> = (0..blobs.layers.len())
            .map(|i| format!("layer{i}/layer.tar"))
            .collect();
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": name.map(|n| vec![n.to_string()]),
            "Layers": layer_names,
        }]))?;
        let mut files = vec![
            ("manifest.json".to_string(), manifest),
            (config_name, blobs.config),
        ];
        for (name, (_, _, tar)) in layer_names.into_iter().zip(blobs.layers) {
            files.push((name, tar));
        }
        write_tar(path, files)?;
        Ok(blobs.image)
    }
}

fn write_tar(path: &Path, files: Vec<ArchiveFile>) -> io::Result<()> {
    let mut builder = tar::Builder::new(io::BufWriter::new(fs::File::create(path)?));
    for (name, data) in files {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    builder.into_inner()?.flush()
}

/// The commands `busybox_image` links to `/bin/busybox`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "httpd",
    "sleep",
    "nc",
    "cat",
    "dd",
    "env",
    "echo",
    "ls",
    "id",
    "hostname",
    "ip",
    "wget",
    "ps",
    "kill",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "true",
    "false",
    "test",
    "grep",
    "sed",
    "head",
    "tail",
    "wc",
    "sort",
    "uname",
    "date",
    "printf",
    "pwd",
    "ln",
    "chmod",
    "chown",
    "stat",
    "df",
    "du",
    "mount",
    "umount",
    "find",
    "xargs",
    "tr",
    "cut",
    "tee",
    "yes",
    "seq",
    "nslookup",
    "ping",
    "ifconfig",
    "route",
    "netstat",
    "vi",
    "less",
    "more",
    "free",
    "top",
    "uptime",
    "whoami",
    "basename",
    "dirname",
    "readlink",
    "realpath",
    "sync",
    "timeout",
    "usleep",
    "watch",
    "which",
    "md5sum",
    "sha256sum",
    "base64",
    "hexdump",
    "od",
    "nohup",
    "setsid",
    "su",
    "init",
];

/// A busybox image made from the host's `/bin/busybox` (Debian `busybox-static`): the
/// binary, symlinks for [`BUSYBOX_APPLETS`] in `/bin`, the usual top-level directories,
/// `/etc/passwd` and `/etc/group` with `root` and `nobody`, and `CMD ["sh"]`.
pub fn busybox_image() -> OciArchiveBuilder {
    let mut builder = OciArchiveBuilder::new().dir("bin", 0o755).host_file(
        "bin/busybox",
        Path::new("/bin/busybox"),
        0o755,
    );
    for applet in BUSYBOX_APPLETS {
        builder = builder.symlink(&format!("bin/{applet}"), "busybox");
    }
    for (dir, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/www", 0o755),
        ("run", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("home", 0o755),
    ] {
        builder = builder.dir(dir, mode);
    }
    builder
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)
        .file("etc/hostname", b"busybox\n", 0o644)
        .cmd(["sh"])
}
