//! Runs the real binary: startup line, dual-stack listening, signals, crashes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

const DEADLINE: Duration = Duration::from_secs(20);

/// The running app; killed and reaped when dropped, so no test leaves a process behind.
struct App {
    child: Child,
    lines: Receiver<String>,
    port: u16,
}

impl App {
    fn start(args: &[&str], env: &[(&str, &str)]) -> App {
        let mut app = App::spawn(args, env);
        let line = app.wait_line(|l| l.starts_with("hangar-testapp listening on "));
        app.port = line
            .split_whitespace()
            .nth(3)
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .map(|addr| addr.port())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        app
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar-testapp"))
            .args(args)
            .env_clear()
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hangar-testapp");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        App {
            child,
            lines,
            port: 0,
        }
    }

    /// Waits for a stdout line matching `wanted`, failing after the deadline.
    fn wait_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!("line not printed in time; saw {seen:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("app exited; it printed {seen:?}"),
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).expect("send signal");
    }

    /// Waits for the process to exit, polling against the deadline.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "app did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn connect(&self, host: &str) -> TcpStream {
        let stream = TcpStream::connect((host, self.port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request and reads until the server closes (requests use Connection: close).
fn request(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serves_ipv4_and_ipv6_with_identity_headers() {
    let mut app = App::start(
        &[],
        &[("FLY_MACHINE_ID", "0a1b2c3d4e5f60"), ("VERSION", "v12")],
    );
    for host in ["127.0.0.1", "::1"] {
        let response = request(&mut app.connect(host), "/");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("x-version: v12\r\n"), "{response}");
        assert!(
            response.contains("x-machine-id: 0a1b2c3d4e5f60\r\n"),
            "{response}"
        );
        assert!(
            response.ends_with("\r\n\r\nhello from 0a1b2c3d4e5f60 version v12\n"),
            "{response}"
        );
    }
    assert_eq!(app.wait_line(|l| l.starts_with("GET ")), "GET / 200");
}

#[test]
fn unhealthy_environment_fails_health() {
    let app = App::start(&[], &[("UNHEALTHY", "1")]);
    let response = request(&mut app.connect("127.0.0.1"), "/health");
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{response}"
    );
}

#[test]
fn sigterm_finishes_the_in_flight_request_then_exits_zero() {
    let mut app = App::start(&[], &[]);
    let stream = app.connect("127.0.0.1");
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // A first exchange proves the connection has been accepted and has its thread.
    writer.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let mut content_length = None;
    for i in 0.. {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if i == 0 {
            assert_eq!(line, "HTTP/1.1 200 OK\r\n");
        }
        if let Some(n) = line.strip_prefix("content-length: ") {
            content_length = Some(n.trim().parse::<usize>().unwrap());
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; content_length.expect("content-length")];
    reader.read_exact(&mut body).unwrap();
    assert_eq!(body, b"ok");

    writer
        .write_all(b"GET /slow?ms=700 HTTP/1.1\r\n\r\n")
        .unwrap();
    // Only once the app has read the request is it in flight; before that, a shutdown
    // may rightly close the idle connection.
    app.wait_line(|l| l == "GET /slow sleeping 700 ms");
    app.signal(Signal::TERM);
    app.wait_line(|l| l.contains("received SIGTERM, stopping"));
    let mut response = String::new();
    reader.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("connection: close\r\n"), "{response}");
    assert!(response.ends_with("slept 700 ms\n"), "{response}");
    app.wait_line(|l| l.contains("exiting 0"));
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn sigint_on_an_idle_app_exits_zero() {
    let mut app = App::start(&[], &[]);
    app.signal(Signal::INT);
    app.wait_line(|l| l.contains("received SIGINT"));
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn ignored_signals_keep_it_serving() {
    for (args, env) in [
        (&["--ignore-signals"][..], &[][..]),
        (&[][..], &[("IGNORE_SIGNALS", "1")][..]),
    ] {
        let mut app = App::start(args, env);
        app.signal(Signal::TERM);
        app.wait_line(|l| l.contains("received SIGTERM, ignoring it"));
        app.signal(Signal::INT);
        app.wait_line(|l| l.contains("received SIGINT, ignoring it"));
        let response = request(&mut app.connect("127.0.0.1"), "/");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(app.child.try_wait().unwrap().is_none(), "still running");
    }
}

#[test]
fn crash_on_boot_and_crash_on_request_exit_one() {
    let mut app = App::spawn(&["--crash-on-boot"], &[]);
    app.wait_line(|l| l.contains("crashing on boot"));
    assert_eq!(app.wait_exit().code(), Some(1));

    let mut app = App::start(&[], &[]);
    let response = request(&mut app.connect("127.0.0.1"), "/crash");
    assert_eq!(response, "", "no response before the crash");
    assert_eq!(app.wait_exit().code(), Some(1));
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("[::]:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_hangar-testapp"))
        .env_clear()
        .env("PORT", &port)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on port {port}")),
        "{stderr}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_hangar-testapp"))
        .arg("--nope")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
