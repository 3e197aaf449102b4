//! Image uploads: a tarball as is, or an OCI layout directory tarred on the fly.
//!
//! Neither is read into memory: the file is streamed from disk, and the directory is
//! written by the `tar` crate on a blocking thread into a bounded channel that the
//! request body drains, so an upload of several GiB uses a few hundred KiB.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ClientError;

/// Size of the chunks sent from the tar thread.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks in flight between the tar thread and the request.
const CHANNEL_CHUNKS: usize = 4;

/// A request body for an image, and for a directory the task that writes it.
pub(crate) struct ImageBody {
    pub(crate) body: reqwest::Body,
    /// Known for files, so the server can refuse a too large upload before reading it.
    pub(crate) length: Option<u64>,
    /// The tar writer of a directory upload; its error explains a failed upload better
    /// than the aborted request does.
    pub(crate) writer: Option<JoinHandle<io::Result<()>>>,
}

/// Opens `path` (a tarball or an OCI layout directory) as an upload body.
pub(crate) async fn image_body(path: &Path) -> Result<ImageBody, ClientError> {
    let io_err = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(io_err)?;
    if meta.is_dir() {
        match tokio::fs::metadata(path.join("oci-layout")).await {
            Ok(m) if m.is_file() => {}
            _ => {
                return Err(ClientError::NotOciLayout {
                    path: path.to_owned(),
                });
            }
        }
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
        let dir = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || write_layout_tar(&dir, &tx));
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return Ok(ImageBody {
            body: reqwest::Body::wrap_stream(stream),
            length: None,
            writer: Some(writer),
        });
    }
    let file = tokio::fs::File::open(path).await.map_err(io_err)?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK_BYTES);
    Ok(ImageBody {
        body: reqwest::Body::wrap_stream(stream),
        length: Some(meta.len()),
        writer: None,
    })
}

/// Writes `dir` as a tar (entries relative to `dir`, like `oci-archive`) into `tx`.
fn write_layout_tar(dir: &Path, tx: &mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    let sink = ChannelWriter { tx: tx.clone() };
    let result = (|| {
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(CHUNK_BYTES, sink));
        // Symlinks are stored as links, never followed out of the layout.
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        entries.sort();
        for entry in entries {
            let Some(name) = entry.file_name() else {
                continue;
            };
            if entry.symlink_metadata()?.is_dir() {
                builder.append_dir_all(name, &entry)?;
            } else {
                builder.append_path_with_name(&entry, name)?;
            }
        }
        builder.into_inner()?.flush()
    })();
    if let Err(e) = &result {
        // Fail the body too, so the server sees a broken upload rather than a short tar.
        let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
    }
    result
}

/// A `Write` into the body channel; fails once the request is gone.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload was aborted"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
