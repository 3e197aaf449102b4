//! What each path answers. Routing is a pure function of the request, the configuration
//! and the health file, so most of it is tested without sockets.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::http::Request;

/// The app's configuration, from the environment and arguments (see `main.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub port: u16,
    /// `$VERSION` or `dev`.
    pub version: String,
    /// `$FLY_MACHINE_ID` or the hostname.
    pub machine_id: String,
    /// `$UNHEALTHY` is set: `/health` answers 503.
    pub unhealthy: bool,
    /// When this file exists, `/health` answers 503 (`/tmp/unhealthy`).
    pub unhealthy_file: PathBuf,
    pub ignore_signals: bool,
    pub crash_on_boot: bool,
}

/// What the server should do for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with this status and body.
    Respond {
        status: u16,
        body: String,
        allow: Option<&'static str>,
    },
    /// Wait, then answer 200.
    Sleep(Duration),
    /// Allocate and touch this many MiB and keep them, then answer 200.
    Alloc(u64),
    /// Stream the request body back.
    Echo,
    /// Exit with status 1 at once, without answering.
    Crash,
}

/// The longest `/slow` accepts: ten minutes, longer than any kill timeout.
pub const MAX_SLOW_MS: u64 = 600_000;
/// The most `/alloc` takes in one request: 1 TiB, so tests can provoke the OOM killer.
pub const MAX_ALLOC_MB: u64 = 1024 * 1024;

fn respond(status: u16, body: impl Into<String>) -> Action {
    Action::Respond {
        status,
        body: body.into(),
        allow: None,
    }
}

fn number_param(req: &Request, name: &str, max: u64) -> Result<u64, Action> {
    let raw = req.query_param(name).unwrap_or("");
    match raw.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(respond(
            400,
            format!("{name} must be a whole number from 0 to {max}, got {raw:?}\n"),
        )),
    }
}

/// Decides what to do for a request.
pub fn route(req: &Request, config: &Config) -> Action {
    let get_like = matches!(req.method.as_str(), "GET" | "HEAD");
    let method_not_allowed = |allow| Action::Respond {
        status: 405,
        body: format!("use {allow}\n"),
        allow: Some(allow),
    };
    match req.path.as_str() {
        "/" | "/health" | "/slow" | "/alloc" | "/crash" if !get_like => {
            method_not_allowed("GET, HEAD")
        }
        "/echo" if req.method != "POST" => method_not_allowed("POST"),
        "/" => respond(
            200,
            format!(
                "hello from {} version {}\n",
                config.machine_id, config.version
            ),
        ),
        "/health" => {
            if config.unhealthy || config.unhealthy_file.exists() {
                respond(503, "unhealthy")
            } else {
                respond(200, "ok")
            }
        }
        "/slow" => match number_param(req, "ms", MAX_SLOW_MS) {
            Ok(ms) => Action::Sleep(Duration::from_millis(ms)),
            Err(bad) => bad,
        },
        "/alloc" => match number_param(req, "mb", MAX_ALLOC_MB) {
            Ok(mb) => Action::Alloc(mb),
            Err(bad) => bad,
        },
        "/crash" => Action::Crash,
        "/echo" => Action::Echo,
        _ => respond(404, format!("no route for {}\n", req.path)),
    }
}

/// Memory taken by `/alloc`, held until the process exits.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Allocates `mb` MiB, writes to every page so the memory is really resident (and counts
/// against the cgroup limit), and keeps it. Returns the total MiB held.
pub fn alloc_and_hold(mb: u64) -> Result<u64, String> {
    const MIB: usize = 1024 * 1024;
    let bytes = usize::try_from(mb)
        .ok()
        .and_then(|mb| mb.checked_mul(MIB))
        .ok_or("too large")?;
    let mut block: Vec<u8> = Vec::new();
    block
        .try_reserve_exact(bytes)
        .map_err(|err| format!("cannot allocate {mb} MiB: {err}"))?;
    block.resize(bytes, 0);
    // Zero pages from the allocator may be shared and not resident; a non-zero byte per
    // page forces a private page each.
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    held.push(block);
    Ok(held.iter().map(|b| b.len() as u64).sum::<u64>() / MIB as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    pub fn config() -> Config {
        Config {
            port: 8080,
            version: "v7".into(),
            machine_id: "0123456789abcd".into(),
            unhealthy: false,
            unhealthy_file: PathBuf::from("/nonexistent/unhealthy"),
            ignore_signals: false,
            crash_on_boot: false,
        }
    }

    /// Routes `request_line` (a full head is built around it) and compares the action.
    fn check(config: &Config, request_line: &str, expected: &str) {
        let head = format!("{request_line}\r\nHost: test\r\n\r\n");
        let req = parse_head(head.as_bytes()).expect("valid head");
        let actual = match route(&req, config) {
            Action::Respond {
                status,
                body,
                allow,
            } => {
                format!(
                    "{status} {body:?}{}",
                    allow.map(|a| format!(" allow={a}")).unwrap_or_default()
                )
            }
            other => format!("{other:?}"),
        };
        assert_eq!(actual, expected, "for {request_line}");
    }

    #[test]
    fn routes() {
        let c = config();
        check(
            &c,
            "GET / HTTP/1.1",
            r#"200 "hello from 0123456789abcd version v7\n""#,
        );
        check(
            &c,
            "HEAD / HTTP/1.1",
            r#"200 "hello from 0123456789abcd version v7\n""#,
        );
        check(
            &c,
            "GET /?x=1 HTTP/1.1",
            r#"200 "hello from 0123456789abcd version v7\n""#,
        );
        check(&c, "GET /health HTTP/1.1", r#"200 "ok""#);
        check(&c, "GET /slow?ms=250 HTTP/1.1", "Sleep(250ms)");
        check(&c, "GET /slow?ms=0 HTTP/1.1", "Sleep(0ns)");
        check(
            &c,
            "GET /slow HTTP/1.1",
            r#"400 "ms must be a whole number from 0 to 600000, got \"\"\n""#,
        );
        check(
            &c,
            "GET /slow?ms=-5 HTTP/1.1",
            r#"400 "ms must be a whole number from 0 to 600000, got \"-5\"\n""#,
        );
        check(
            &c,
            "GET /slow?ms=600001 HTTP/1.1",
            r#"400 "ms must be a whole number from 0 to 600000, got \"600001\"\n""#,
        );
        check(&c, "GET /alloc?mb=64 HTTP/1.1", "Alloc(64)");
        check(
            &c,
            "GET /alloc?mb=lots HTTP/1.1",
            r#"400 "mb must be a whole number from 0 to 1048576, got \"lots\"\n""#,
        );
        check(&c, "GET /crash HTTP/1.1", "Crash");
        check(&c, "POST /echo HTTP/1.1", "Echo");
        check(&c, "GET /echo HTTP/1.1", r#"405 "use POST\n" allow=POST"#);
        check(
            &c,
            "POST / HTTP/1.1",
            r#"405 "use GET, HEAD\n" allow=GET, HEAD"#,
        );
        check(
            &c,
            "DELETE /crash HTTP/1.1",
            r#"405 "use GET, HEAD\n" allow=GET, HEAD"#,
        );
        check(&c, "GET /nope HTTP/1.1", r#"404 "no route for /nope\n""#);
        check(
            &c,
            "GET /health/ HTTP/1.1",
            r#"404 "no route for /health/\n""#,
        );
    }

    #[test]
    fn health_follows_the_environment_and_the_file() {
        let unhealthy = Config {
            unhealthy: true,
            ..config()
        };
        check(&unhealthy, "GET /health HTTP/1.1", r#"503 "unhealthy""#);
        let dir = std::env::temp_dir().join(format!("hangar-testapp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("unhealthy");
        let with_file = Config {
            unhealthy_file: file.clone(),
            ..config()
        };
        check(&with_file, "GET /health HTTP/1.1", r#"200 "ok""#);
        std::fs::write(&file, "").unwrap();
        check(&with_file, "GET /health HTTP/1.1", r#"503 "unhealthy""#);
        std::fs::remove_file(&file).unwrap();
        check(&with_file, "GET /health HTTP/1.1", r#"200 "ok""#);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn alloc_holds_what_it_took() {
        let before = alloc_and_hold(0).unwrap();
        assert_eq!(alloc_and_hold(2).unwrap(), before + 2);
        assert_eq!(alloc_and_hold(1).unwrap(), before + 3);
    }
}
