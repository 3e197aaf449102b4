//! `POST /v1/apps/{app}/builds`: a Dockerfile build from an uploaded context, with the
//! build's output streamed back as NDJSON (see `crate::build`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::Q;
use crate::auth::{Access, Caller};
use crate::build::{
    BuildError, BuildEvent, BuildSpec, Builder, MAX_CONTEXT_BYTES, WorkDir, remove_stale,
};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::{Control, blocking};

/// Events buffered between the build and a slow client; buildah waits beyond that.
const EVENT_BUFFER: usize = 256;
/// Set once the leftovers of an earlier server process are removed.
static STALE_REMOVED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
/// Silence after which an empty line is sent.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(2);

impl From<BuildError> for ApiError {
    fn from(e: BuildError) -> Self {
        let msg = e.to_string();
        match e {
            BuildError::NoBuildah { .. } => ApiError::Unprocessable(msg),
            BuildError::BadRequest(_) | BuildError::BadContext(_) => ApiError::BadRequest(msg),
            BuildError::TooLarge { .. } => ApiError::TooLarge(msg),
            BuildError::Io { .. } => ApiError::Internal(msg),
        }
    }
}

/// Starts a build. Errors before the build starts are ordinary JSON errors; once it
/// runs, the answer is 200 with an NDJSON stream that ends in a `done` or `error` event.
/// Dropping the response (the client hanging up) cancels the build.
pub(super) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    Q(params): Q<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let record = control.store.get_app(&app).await?;
    caller.check_app(&record, Access::Write)?;
    let mut spec = BuildSpec::new(&record.name);
    for (k, v) in &params {
        spec.apply_param(k, v)?;
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !matches!(
            essence,
            "application/x-tar"
                | "application/gzip"
                | "application/x-gzip"
                | "application/octet-stream"
        ) {
            return Err(ApiError::BadRequest(format!(
                "Content-Type {ct:?} is not a tar: send the context as application/x-tar"
            )));
        }
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > MAX_CONTEXT_BYTES
    {
        return Err(BuildError::TooLarge {
            limit: MAX_CONTEXT_BYTES,
        }
        .into());
    }
    let data_dir = control
        .images
        .root()
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| ApiError::Internal("the image store has no data dir".into()))?;
    let helper = Some(control.runtime.options().shim_exe.clone());
    let builder = Builder::for_server(&data_dir, helper)?;
    // Builds interrupted by the death of an earlier server process are removed before
    // this process's first build (none of its own can be running yet).
    STALE_REMOVED
        .get_or_init(|| {
            let (root, cgroups) = (builder.builds_root.clone(), builder.cgroups.clone());
            async move {
                let _ = blocking(move || remove_stale(&root, cgroups.as_ref())).await;
            }
        })
        .await;

    let work = WorkDir::create(&builder.builds_root, &spec.id)?;
    receive_context(body, &work.upload()).await?;
    let (upload, context, dockerfile) = (work.upload(), work.context(), spec.dockerfile.clone());
    blocking(move || -> Result<(), BuildError> {
        crate::build::extract_context(&upload, &context)?;
        let _ = std::fs::remove_file(&upload);
        crate::build::check_dockerfile(&context, &dockerfile)?;
        Ok(())
    })
    .await??;

    tracing::info!(app = %spec.app, build = %spec.id, "build started");
    let (tx, rx) = mpsc::channel::<BuildEvent>(EVENT_BUFFER);
    let images = control.images.clone();
    let shutdown = control.shutdown.clone();
    control.tasks.spawn(async move {
        builder.run(spec, work, images, tx, shutdown).await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(event_lines(rx, KEEPALIVE)),
    )
        .into_response())
}

/// The events as NDJSON lines, with an empty line after every [`KEEPALIVE`] of silence
/// (a long `RUN` step prints nothing): writing it is how a client that hung up is noticed,
/// which drops this stream and so cancels the build.
fn event_lines(
    rx: mpsc::Receiver<BuildEvent>,
    keepalive: std::time::Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    // The first tick comes after one period, not at once.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures_util::stream::unfold((rx, ticks), |(mut rx, mut ticks)| async move {
        let line = tokio::select! {
            event = rx.recv() => {
                let mut line = serde_json::to_vec(&event?).unwrap_or_default();
                line.push(b'\n');
                ticks.reset();
                line
            }
            _ = ticks.tick() => b"\n".to_vec(),
        };
        Some((Ok(bytes::Bytes::from(line)), (rx, ticks)))
    })
}
/// Spools the request body to `path`, refusing more than [`MAX_CONTEXT_BYTES`].
async fn receive_context(body: Body, path: &std::path::Path) -> ApiResult<()> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| ApiError::BadRequest(format!("the context upload was interrupted: {e}")))?
    {
        total += chunk.len() as u64;
        if total > MAX_CONTEXT_BYTES {
            return Err(BuildError::TooLarge {
                limit: MAX_CONTEXT_BYTES,
            }
            .into());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("could not store the build context: {e}")))?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    if total == 0 {
        return Err(ApiError::BadRequest(
            "empty body: send the build context as a tar (application/x-tar)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_errors_map_to_statuses() {
        let cases = [
            (
                BuildError::NoBuildah {
                    looked: "PATH=/bin".into(),
                },
                422,
            ),
            (BuildError::BadRequest("x".into()), 400),
            (BuildError::BadContext("x".into()), 400),
            (BuildError::TooLarge { limit: 1 }, 413),
            (
                BuildError::Io {
                    what: "x".into(),
                    source: std::io::Error::other("y"),
                },
                500,
            ),
        ];
        for (e, status) in cases {
            let msg = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status().as_u16(), status, "{msg}");
            assert_eq!(api.to_string(), msg);
        }
        let msg = ApiError::from(BuildError::NoBuildah {
            looked: "PATH=/bin".into(),
        })
        .to_string();
        assert_eq!(
            msg,
            "buildah is not installed on the server (PATH=/bin): apt-get install buildah"
        );
    }

    #[tokio::test]
    async fn events_stream_as_lines_with_keepalives_between() {
        let (tx, rx) = mpsc::channel(4);
        let stream = event_lines(rx, std::time::Duration::from_millis(50));
        tokio::pin!(stream);
        tx.send(BuildEvent::Log { line: "a".into() }).await.unwrap();
        let first = futures_util::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"{\"type\":\"log\",\"line\":\"a\"}\n");
        // After 50 ms of silence comes an empty line.
        let keepalive = futures_util::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&keepalive[..], b"\n");
        drop(tx);
        assert!(futures_util::StreamExt::next(&mut stream).await.is_none());
    }
}
