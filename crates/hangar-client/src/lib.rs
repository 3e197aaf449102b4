//! Typed client of the Hangar HTTP API (`docs/api.md`).
//!
//! [`Client`] has one method per route. Machines use the `hangar_core::machine` types;
//! the other bodies are in [`types`]. [`Client::from_env`] finds the API address and
//! token the way the CLI does (see [`discovery`]).
//!
//! Every error is a [`ClientError`] whose message is one line that says what failed and
//! what to do; the server's own `{"error": ...}` message is kept with its status.
//!
//! **API boundary:** this crate is how the CLI and the whole-system tests talk to the
//! server; it knows nothing of the server's internals.

pub mod build;
mod deploys;
pub mod discovery;
mod error;
mod hostnames;
mod secrets;
mod stream;
mod tokens;
pub mod types;
mod upload;

use std::path::Path;
use std::time::Duration;

use hangar_core::MachineId;
use hangar_core::machine::{Machine, MachineEvent};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use deploys::{
    AppStatus, Deploy, DeployEvent, DeployRequest, Release, ScaleRequest, StatusMachine,
};
pub use discovery::{Overrides, Settings, Token};
pub use error::ClientError;
pub use hostnames::Hostname;
pub use secrets::{MasterKeyRotation, SecretInfo, SecretList, SecretsChanged};
pub use stream::NdjsonStream;
pub use tokens::{CreateTokenRequest, CreatedToken, TokenInfo};
pub use types::*;

/// How long connecting to the API may take; requests themselves have no overall
/// timeout because `logs --follow`, `wait` and image uploads legitimately take long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest error body quoted in a message when the server sent no JSON error.
const MAX_QUOTED_BODY: usize = 200;

/// A client of one Hangar API.
#[derive(Debug, Clone)]
pub struct Client {
    base_url: Url,
    token: Token,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `base_url` (e.g. `http://127.0.0.1:4280`) using `token`.
    pub fn new(base_url: &str, token: Token) -> Result<Client, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let url = Url::parse(base_url.trim()).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "the scheme must be http or https, not {:?}",
                url.scheme()
            )));
        }
        if url.cannot_be_a_base() || url.host().is_none() {
            return Err(invalid("it has no host".to_owned()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("it must not have a query or fragment".to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("hangar-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Client {
            base_url: url,
            token,
            http,
        })
    }

    /// A client configured from the flags, the environment, the config file or the
    /// server's admin token, in that order (see [`discovery`]).
    pub fn from_env(overrides: &Overrides) -> Result<Client, ClientError> {
        let settings = discovery::resolve(overrides)?;
        Client::new(&settings.api_url, settings.token)
    }

    /// The base URL of the API.
    pub fn base_url(&self) -> &str {
        self.base_url.as_str().trim_end_matches('/')
    }

    // ---- apps ----

    /// `GET /v1/apps`.
    pub async fn list_apps(&self, org_slug: Option<&str>) -> Result<AppList, ClientError> {
        let mut url = self.url(&["v1", "apps"]);
        if let Some(org) = org_slug {
            url.query_pairs_mut().append_pair("org_slug", org);
        }
        self.json(self.request(Method::GET, url)).await
    }

    /// `POST /v1/apps`.
    pub async fn create_app(&self, name: &str, org_slug: Option<&str>) -> Result<App, ClientError> {
        let body = CreateAppRequest {
            app_name: name.to_owned(),
            org_slug: org_slug.map(str::to_owned),
        };
        let url = self.url(&["v1", "apps"]);
        self.json(self.request(Method::POST, url).json(&body)).await
    }

    /// `GET /v1/apps/{app}`.
    pub async fn get_app(&self, name: &str) -> Result<App, ClientError> {
        self.json(self.request(Method::GET, self.url(&["v1", "apps", name])))
            .await
    }

    /// `DELETE /v1/apps/{app}`; `force` destroys its machines first.
    pub async fn destroy_app(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let mut url = self.url(&["v1", "apps", name]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        self.send(self.request(Method::DELETE, url)).await.map(drop)
    }

    // ---- organizations ----

    /// `GET /v1/orgs`.
    pub async fn list_orgs(&self) -> Result<Vec<Org>, ClientError> {
        self.json(self.request(Method::GET, self.url(&["v1", "orgs"])))
            .await
    }

    /// `POST /v1/orgs`.
    pub async fn create_org(&self, slug: &str) -> Result<Org, ClientError> {
        let body = serde_json::json!({ "slug": slug });
        let url = self.url(&["v1", "orgs"]);
        self.json(self.request(Method::POST, url).json(&body)).await
    }

    // ---- machines ----

    /// `GET /v1/apps/{app}/machines`.
    pub async fn list_machines(
        &self,
        app: &str,
        options: &ListMachinesOptions,
    ) -> Result<Vec<Machine>, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines"]);
        {
            let mut q = url.query_pairs_mut();
            if options.include_deleted {
                q.append_pair("include_deleted", "true");
            }
            if !options.states.is_empty() {
                q.append_pair("state", &options.states.join(","));
            }
        }
        self.json(self.request(Method::GET, clean(url))).await
    }

    /// `POST /v1/apps/{app}/machines`: creates (and unless `skip_launch`, starts) a machine.
    pub async fn create_machine(
        &self,
        app: &str,
        request: &CreateMachineRequest,
    ) -> Result<Machine, ClientError> {
        let url = self.url(&["v1", "apps", app, "machines"]);
        self.json(self.request(Method::POST, url).json(request))
            .await
    }

    /// `GET /v1/apps/{app}/machines/{id}`.
    pub async fn get_machine(&self, app: &str, id: &MachineId) -> Result<Machine, ClientError> {
        let url = self.url(&["v1", "apps", app, "machines", id.as_str()]);
        self.json(self.request(Method::GET, url)).await
    }

    /// `POST /v1/apps/{app}/machines/{id}`: replaces the config.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &MachineId,
        request: &CreateMachineRequest,
    ) -> Result<Machine, ClientError> {
        let url = self.url(&["v1", "apps", app, "machines", id.as_str()]);
        self.json(self.request(Method::POST, url).json(request))
            .await
    }

    /// `DELETE /v1/apps/{app}/machines/{id}`; `force` kills a running machine.
    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &MachineId,
        force: bool,
    ) -> Result<OkResult, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines", id.as_str()]);
        if force {
            url.query_pairs_mut().append_pair("force", "true");
        }
        self.json(self.request(Method::DELETE, url)).await
    }

    /// `POST .../start`.
    pub async fn start_machine(
        &self,
        app: &str,
        id: &MachineId,
    ) -> Result<StartResult, ClientError> {
        let url = self.url(&["v1", "apps", app, "machines", id.as_str(), "start"]);
        self.json(self.request(Method::POST, url)).await
    }

    /// `POST .../stop`; returns once the machine is stopped.
    pub async fn stop_machine(
        &self,
        app: &str,
        id: &MachineId,
        request: &StopRequest,
    ) -> Result<OkResult, ClientError> {
        let url = self.url(&["v1", "apps", app, "machines", id.as_str(), "stop"]);
        self.json(self.request(Method::POST, url).json(request))
            .await
    }

    /// `POST .../restart`.
    pub async fn restart_machine(
        &self,
        app: &str,
        id: &MachineId,
        request: &StopRequest,
    ) -> Result<OkResult, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines", id.as_str(), "restart"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(signal) = &request.signal {
                q.append_pair("signal", signal);
            }
            if let Some(timeout) = &request.timeout {
                q.append_pair("timeout", &timeout.to_string());
            }
        }
        self.json(self.request(Method::POST, clean(url))).await
    }

    /// `POST .../signal` with a signal name (`SIGUSR1`).
    pub async fn signal_machine(
        &self,
        app: &str,
        id: &MachineId,
        signal: &str,
    ) -> Result<OkResult, ClientError> {
        let url = self.url(&["v1", "apps", app, "machines", id.as_str(), "signal"]);
        let body = serde_json::json!({ "signal": signal });
        self.json(self.request(Method::POST, url).json(&body)).await
    }

    /// `GET .../wait`: waits on the server for a state; a timeout is an
    /// [`ClientError::Api`] with status 408.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &MachineId,
        options: &WaitOptions,
    ) -> Result<WaitResult, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines", id.as_str(), "wait"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(state) = &options.state {
                q.append_pair("state", state);
            }
            if let Some(t) = options.timeout_secs {
                q.append_pair("timeout", &t.to_string());
            }
            if let Some(instance) = &options.instance_id {
                q.append_pair("instance_id", instance);
            }
        }
        self.json(self.request(Method::GET, clean(url))).await
    }

    /// `GET .../events`, newest first.
    pub async fn machine_events(
        &self,
        app: &str,
        id: &MachineId,
        limit: Option<u32>,
    ) -> Result<Vec<MachineEvent>, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines", id.as_str(), "events"]);
        if let Some(limit) = limit {
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
        }
        self.json(self.request(Method::GET, url)).await
    }

    /// `GET .../logs`: the log lines, streamed as the server sends them. With
    /// `follow` the stream ends only when the server closes it.
    pub async fn machine_logs(
        &self,
        app: &str,
        id: &MachineId,
        options: &LogOptions,
    ) -> Result<NdjsonStream<LogLine>, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "machines", id.as_str(), "logs"]);
        {
            let mut q = url.query_pairs_mut();
            if options.follow {
                q.append_pair("follow", "true");
            }
            if let Some(tail) = options.tail {
                q.append_pair("tail", &tail.to_string());
            }
        }
        let response = self.send(self.request(Method::GET, clean(url))).await?;
        Ok(NdjsonStream::new(response, self.base_url().to_owned()))
    }

    // ---- images ----

    /// `GET /v1/images`.
    pub async fn list_images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        self.json(self.request(Method::GET, self.url(&["v1", "images"])))
            .await
    }

    /// `POST /v1/images/import`: uploads an `oci-archive` or `docker save` tarball as is,
    /// or an OCI layout directory as a tar made on the fly; `tag` names the image.
    pub async fn import_image(
        &self,
        path: &Path,
        tag: Option<&str>,
    ) -> Result<Vec<ImageSummary>, ClientError> {
        let mut url = self.url(&["v1", "images", "import"]);
        if let Some(tag) = tag {
            url.query_pairs_mut().append_pair("tag", tag);
        }
        let upload = upload::image_body(path).await?;
        let mut request = self
            .request(Method::POST, url)
            .header(CONTENT_TYPE, "application/x-tar");
        if let Some(len) = upload.length {
            request = request.header(CONTENT_LENGTH, len);
        }
        let result = self.json(request.body(upload.body)).await;
        if let Some(writer) = upload.writer {
            // A failure to read the directory is the real cause of a failed upload.
            if let Ok(Err(source)) = writer.await
                && (source.kind() != std::io::ErrorKind::BrokenPipe || result.is_ok())
            {
                return Err(ClientError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        result
    }

    /// `POST /v1/images/pull`.
    pub async fn pull_image(&self, request: &PullRequest) -> Result<ImageSummary, ClientError> {
        let url = self.url(&["v1", "images", "pull"]);
        self.json(self.request(Method::POST, url).json(request))
            .await
    }

    /// `DELETE /v1/images/{name}`.
    pub async fn remove_image(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "images", name]);
        self.send(self.request(Method::DELETE, url)).await.map(drop)
    }

    /// `POST /v1/images/gc`.
    pub async fn gc_images(&self) -> Result<GcReport, ClientError> {
        self.json(self.request(Method::POST, self.url(&["v1", "images", "gc"])))
            .await
    }

    // ---- other ----

    /// `GET /healthz` (needs no token): `Ok` when the server answers `{"ok": true}`.
    pub async fn healthz(&self) -> Result<bool, ClientError> {
        let url = self.url(&["healthz"]);
        let ok: OkResult = self.json(self.http.get(url)).await?;
        Ok(ok.ok)
    }

    /// `GET /v1/openapi.json` (needs no token).
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        let url = self.url(&["v1", "openapi.json"]);
        self.json(self.http.get(url)).await
    }

    // ---- plumbing ----

    /// The base URL with `segments` appended, each percent-encoded as one segment, so a
    /// name like `registry:5000/repo:tag` cannot change the route.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        {
            // `cannot_be_a_base` URLs are refused in `new`, so this cannot fail.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty().extend(segments);
            }
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.token.expose())
    }

    /// Sends a request; any status but 2xx becomes an error with the server's message.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let (client, request) = request.build_split();
        let request =
            request.map_err(|e| ClientError::transport(self.base_url(), self.base_url(), e))?;
        let url = request.url().to_string();
        let response = client
            .execute(request)
            .await
            .map_err(|e| ClientError::transport(self.base_url(), &url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = error_message(status, &body);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized { message });
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::transport(self.base_url(), &url, e))?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { url, source })
    }
}

/// Drops the `?` that `query_pairs_mut` leaves when nothing was appended.
fn clean(mut url: Url) -> Url {
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

/// The message of an error answer: the `error` field of a JSON body, else the body's
/// first line, else the status text.
fn error_message(status: reqwest::StatusCode, body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_str::<ErrorBody>(body)
        && !parsed.error.trim().is_empty()
    {
        return one_line(&parsed.error);
    }
    let text = one_line(body);
    if text.is_empty() {
        return format!(
            "the server answered {}",
            status.canonical_reason().unwrap_or("an error")
        );
    }
    let mut quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
    if quoted.len() < text.len() {
        quoted.push_str("...");
    }
    format!("the server answered: {quoted}")
}

/// Joins the lines of `s` so an error stays one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_prefer_the_json_error() {
        let s = reqwest::StatusCode::NOT_FOUND;
        assert_eq!(
            error_message(s, r#"{"error":"app \"x\" not found"}"#),
            "app \"x\" not found"
        );
        assert_eq!(
            error_message(s, "no\nsuch route"),
            "the server answered: no such route"
        );
        assert_eq!(error_message(s, ""), "the server answered Not Found");
        let long = "x".repeat(1000);
        assert!(error_message(s, &long).len() < 300);
    }

    #[test]
    fn urls_encode_each_segment() {
        let c = Client::new("http://127.0.0.1:4280/base/", Token::new("t")).unwrap();
        assert_eq!(
            c.url(&["v1", "images", "reg:5000/repo:tag"]).as_str(),
            "http://127.0.0.1:4280/base/v1/images/reg:5000%2Frepo:tag"
        );
        assert_eq!(
            c.url(&["v1", "apps", "../x"]).as_str(),
            "http://127.0.0.1:4280/base/v1/apps/..%2Fx"
        );
        assert_eq!(c.base_url(), "http://127.0.0.1:4280/base");
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in [
            "",
            "127.0.0.1:4280",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "unix:/run/x",
        ] {
            let err = Client::new(bad, Token::new("t")).unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidUrl { .. }),
                "{bad}: {err}"
            );
        }
    }
}
