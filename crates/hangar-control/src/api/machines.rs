//! `/v1/apps/{app}/machines`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hangar_core::machine::{GoDuration, MachineConfig, MachineState, parse_signal};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonBody, Q};
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::blocking;
use crate::supervisor::{Control, LaunchRequest};

/// Create and update bodies (Fly: `LaunchMachineInput`).
#[derive(Deserialize)]
pub(super) struct LaunchInput {
    config: MachineConfig,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    skip_launch: bool,
    #[serde(default)]
    current_version: Option<String>,
    /// Accepted for compatibility, not acted on.
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    include_deleted: bool,
    state: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<hangar_core::Machine>>> {
    control.authorize_app(&caller, &app, Access::Read).await?;
    let states: Option<Vec<MachineState>> = q
        .state
        .as_deref()
        .map(|s| {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse::<MachineState>().map_err(ApiError::BadRequest))
                .collect()
        })
        .transpose()?;
    let metadata: Vec<(&str, &str)> = q
        .rest
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())))
        .collect();
    let mut out = Vec::new();
    for rec in control.store.list_machines(&app, q.include_deleted).await? {
        if states.as_ref().is_some_and(|s| !s.contains(&rec.state)) {
            continue;
        }
        if !metadata
            .iter()
            .all(|(k, v)| rec.config.metadata.get(*k).map(String::as_str) == Some(*v))
        {
            continue;
        }
        out.push(control.machine_view(&rec).await?);
    }
    Ok(Json(out))
}

pub(super) async fn create(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(input): JsonBody<LaunchInput>,
) -> ApiResult<Json<hangar_core::Machine>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    if let Some(region) = &input.region
        && !region.is_empty()
        && region != &control.opts.region
    {
        return Err(ApiError::Unprocessable(format!(
            "region {region:?} is not served here: this host is region {:?}",
            control.opts.region
        )));
    }
    let rec = control
        .create_machine(
            &app,
            LaunchRequest {
                config: input.config,
                name: input.name,
                skip_launch: input.skip_launch,
            },
        )
        .await?;
    Ok(Json(control.machine_view(&rec).await?))
}

pub(super) async fn get(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<hangar_core::Machine>> {
    control.authorize_app(&caller, &app, Access::Read).await?;
    let rec = control.machine_record(&app, &id).await?;
    Ok(Json(control.machine_view(&rec).await?))
}

pub(super) async fn update(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    JsonBody(input): JsonBody<LaunchInput>,
) -> ApiResult<Json<hangar_core::Machine>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    let rec = control
        .update_machine(
            &app,
            &id,
            LaunchRequest {
                config: input.config,
                name: input.name,
                skip_launch: input.skip_launch,
            },
            input.current_version,
        )
        .await?;
    Ok(Json(control.machine_view(&rec).await?))
}

#[derive(Deserialize)]
pub(super) struct DestroyQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    kill: bool,
}

pub(super) async fn destroy(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    Q(q): Q<DestroyQuery>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    control
        .destroy_machine(&app, &id, q.force || q.kill)
        .await?;
    Ok(Json(json!({ "ok": true })))
}

pub(super) async fn start(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    let previous = control.start_machine(&app, &id).await?;
    Ok(Json(
        json!({ "message": "started", "status": "started", "previous_state": previous }),
    ))
}

/// A signal given by name or number.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SignalArg {
    Name(String),
    Number(i32),
}

impl SignalArg {
    fn number(&self) -> ApiResult<i32> {
        match self {
            SignalArg::Name(s) => parse_signal(s).map_err(|e| ApiError::BadRequest(e.message)),
            SignalArg::Number(n) => {
                parse_signal(&n.to_string()).map_err(|e| ApiError::BadRequest(e.message))
            }
        }
    }
}

/// Longest grace period a stop or restart request may ask for (Fly's `kill_timeout` maximum).
/// The request waits for the stop, so a longer one would hold the connection for as long.
pub(super) const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);

fn stop_timeout(d: Duration) -> ApiResult<Duration> {
    if d > MAX_STOP_TIMEOUT {
        return Err(ApiError::BadRequest(format!(
            "stop timeout {} is longer than the maximum of {}: use at most \"5m\"",
            GoDuration(d),
            GoDuration(MAX_STOP_TIMEOUT)
        )));
    }
    Ok(d)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct StopInput {
    signal: Option<SignalArg>,
    timeout: Option<GoDuration>,
}

pub(super) async fn stop(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    let input: StopInput = if body.iter().all(u8::is_ascii_whitespace) {
        StopInput::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let signal = input.signal.as_ref().map(SignalArg::number).transpose()?;
    let timeout = input.timeout.map(|d| stop_timeout(d.0)).transpose()?;
    control.stop_machine(&app, &id, signal, timeout).await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
pub(super) struct RestartQuery {
    signal: Option<String>,
    timeout: Option<String>,
}

pub(super) async fn restart(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    Q(q): Q<RestartQuery>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    let signal = q
        .signal
        .as_deref()
        .map(|s| parse_signal(s).map_err(|e| ApiError::BadRequest(e.message)))
        .transpose()?;
    let timeout = q
        .timeout
        .as_deref()
        .map(|t| {
            t.parse::<u64>()
                .map(Duration::from_secs)
                .or_else(|_| t.parse::<GoDuration>().map(|d| d.0))
                .map_err(ApiError::BadRequest)
                .and_then(stop_timeout)
        })
        .transpose()?;
    control.stop_machine(&app, &id, signal, timeout).await?;
    control.start_machine(&app, &id).await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
pub(super) struct SignalInput {
    signal: SignalArg,
}

pub(super) async fn signal(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    JsonBody(input): JsonBody<SignalInput>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Write).await?;
    control
        .signal_machine(&app, &id, input.signal.number()?)
        .await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    state: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    instance_id: Option<String>,
}

pub(super) async fn wait(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    Q(q): Q<WaitQuery>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Read).await?;
    let want: MachineState = q
        .state
        .as_deref()
        .unwrap_or("started")
        .parse()
        .map_err(ApiError::BadRequest)?;
    let timeout = Duration::from_secs(q.timeout.unwrap_or(60).clamp(1, 60));
    let rec = control.machine_record(&app, &id).await?;
    let _ = q.instance_id;
    let mut rx = control.watch_state(&rec.id).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = *rx.borrow_and_update();
        if now == want {
            return Ok(Json(json!({ "ok": true, "state": now })));
        }
        if now == MachineState::Destroyed {
            return Err(ApiError::NotFound(format!(
                "machine {} was destroyed while waiting for {want}",
                rec.id
            )));
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // The slot was dropped: the machine was destroyed.
            Ok(Err(_)) if want == MachineState::Destroyed => {
                return Ok(Json(json!({ "ok": true, "state": want })));
            }
            Ok(Err(_)) => {
                return Err(ApiError::NotFound(format!(
                    "machine {} was destroyed while waiting for {want}",
                    rec.id
                )));
            }
            Err(_) => {
                return Err(ApiError::Timeout(format!(
                    "timed out after {}s waiting for machine {} to be {want} (it is {now})",
                    timeout.as_secs(),
                    rec.id
                )));
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    limit: Option<u32>,
}

pub(super) async fn events(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    Q(q): Q<EventsQuery>,
) -> ApiResult<Json<Value>> {
    control.authorize_app(&caller, &app, Access::Read).await?;
    let rec = control.machine_record(&app, &id).await?;
    let events = control
        .store
        .list_events(&rec.id, q.limit.unwrap_or(100).min(10_000))
        .await?;
    Ok(Json(
        serde_json::to_value(events).map_err(ApiError::internal)?,
    ))
}

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

pub(super) async fn logs(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    Q(q): Q<LogsQuery>,
) -> ApiResult<Response> {
    control.authorize_app(&caller, &app, Access::Read).await?;
    let rec = control.machine_record(&app, &id).await?;
    let machine_id = rec.id.to_string();
    let instance_id = rec.instance_id.0.clone();
    let to_line = move |line: hangar_runtime::machine::LogLine| -> bytes::Bytes {
        let mut v = serde_json::to_value(&line).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("machine_id".into(), Value::String(machine_id.clone()));
            m.insert("instance_id".into(), Value::String(instance_id.clone()));
        }
        let mut s = v.to_string();
        s.push('\n');
        bytes::Bytes::from(s)
    };
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if q.follow {
        // The stream ends when the server shuts down, so open followers never hold up a
        // graceful shutdown.
        let stream = control
            .runtime
            .follow_logs(&rec.id, q.tail)
            .map(move |r| r.map(&to_line).map_err(std::io::Error::other))
            .take_until(control.shutdown.clone().cancelled_owned());
        return Ok((headers, Body::from_stream(stream)).into_response());
    }
    let runtime = control.runtime.clone();
    let id = rec.id.clone();
    let lines = blocking(move || runtime.read_logs(&id, q.tail))
        .await?
        .map_err(ApiError::internal)?;
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(&to_line(l));
    }
    Ok((headers, body).into_response())
}
