//! The accept loop, one thread per connection, keep-alive, and graceful shutdown.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::http::{self, BodyKind, BodyReader, MAX_HEAD_BYTES, ParseError, Request};
use crate::routes::{Action, Config, alloc_and_hold, route};

/// How often a connection waiting for a request checks for shutdown.
const POLL: Duration = Duration::from_millis(100);
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request whose client sends nothing for this long is abandoned.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by the accept loop, the connections and the shutdown trigger.
#[derive(Debug, Default)]
struct Shared {
    shutting_down: AtomicBool,
    in_flight: AtomicUsize,
    connections: Mutex<usize>,
    connections_done: Condvar,
}

/// A bound server; [`Server::run`] serves until [`ShutdownHandle::shutdown`].
pub struct Server {
    listener: TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
}

/// Starts a graceful shutdown from another thread (the signal handler, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Stops accepting; connections finish their current request and close.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // Shutting down a listening socket wakes a thread blocked in accept (it then fails
        // with EINVAL) on Linux, without a self-connection or polling.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Read);
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Binds `[::]:port` (dual-stack, so IPv4 clients are served too), or `0.0.0.0:port` on
    /// hosts without IPv6.
    pub fn bind_port(port: u16, config: Config) -> io::Result<Server> {
        let listener = match TcpListener::bind(("::", port)) {
            Ok(listener) => listener,
            Err(err) if err.kind() == io::ErrorKind::AddrNotAvailable
                || err.raw_os_error() == Some(97) /* EAFNOSUPPORT */ =>
            {
                TcpListener::bind(("0.0.0.0", port))?
            }
            Err(err) => return Err(err),
        };
        Ok(Server::from_listener(listener, config))
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: TcpListener, config: Config) -> Server {
        Server {
            listener,
            config: Arc::new(config),
            shared: Arc::default(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> io::Result<ShutdownHandle> {
        Ok(ShutdownHandle {
            listener: Arc::new(self.listener.try_clone()?),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Accepts connections until shutdown, then waits for every connection to finish its
    /// request. Returns how many requests were still in flight when shutdown began.
    pub fn run(self) -> io::Result<usize> {
        for stream in self.listener.incoming() {
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(stream) => stream,
                // A client that gave up before we accepted it, or a short resource
                // shortage: keep serving the others.
                Err(err) => {
                    eprintln!("accept failed: {err}");
                    // Out of file descriptors or memory: back off briefly instead of
                    // spinning on the same error.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += 1;
            let (config, shared) = (Arc::clone(&self.config), Arc::clone(&self.shared));
            let spawned = std::thread::Builder::new()
                .name("conn".into())
                .spawn(move || {
                    if let Err(err) = serve_connection(stream, &config, &shared) {
                        // Clients that disconnect mid-request are normal for a test app.
                        if !matches!(
                            err.kind(),
                            io::ErrorKind::BrokenPipe
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::UnexpectedEof
                        ) {
                            eprintln!("connection error: {err}");
                        }
                    }
                    let mut open = shared
                        .connections
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *open -= 1;
                    shared.connections_done.notify_all();
                });
            if let Err(err) = spawned {
                eprintln!("cannot start a connection thread: {err}");
                *self
                    .shared
                    .connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) -= 1;
            }
        }
        let in_flight = self.shared.in_flight.load(Ordering::SeqCst);
        let mut open = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *open > 0 {
            open = self
                .shared
                .connections_done
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(in_flight)
    }
}

/// The read side of a connection: between requests it gives up when the server shuts
/// down or the connection idles too long; within a request it waits out a slow client up
/// to [`STALL_TIMEOUT`].
struct ConnReader {
    stream: TcpStream,
    /// True while waiting for the first byte of the next request.
    idle: bool,
    shared: Arc<Shared>,
}

impl Read for ConnReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.idle = false;
                    }
                    return Ok(n);
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.idle && self.shared.shutting_down.load(Ordering::SeqCst) {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "shutting down",
                        ));
                    }
                    let limit = if self.idle {
                        IDLE_TIMEOUT
                    } else {
                        STALL_TIMEOUT
                    };
                    if started.elapsed() >= limit {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow"));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

/// Reads one request head. `Ok(None)` means the connection should close quietly (clean
/// end of stream, shutdown or idle timeout between requests).
fn read_head(
    reader: &mut BufReader<ConnReader>,
) -> io::Result<Option<Result<Vec<u8>, ParseError>>> {
    reader.get_mut().idle = reader.buffer().is_empty();
    let mut head = Vec::new();
    loop {
        let limit = (MAX_HEAD_BYTES + 1 - head.len()) as u64;
        let before = head.len();
        match (&mut *reader).take(limit).read_until(b'\n', &mut head) {
            Ok(0) if head.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "request head truncated",
                ));
            }
            Ok(_) => {}
            Err(err) if before == head.len() && head.is_empty() => {
                return match err.kind() {
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::TimedOut => Ok(None),
                    _ => Err(err),
                };
            }
            Err(err) => return Err(err),
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Some(Err(ParseError::TooLarge)));
        }
        if http::head_complete(&head) {
            return Ok(Some(Ok(head)));
        }
    }
}

/// Decrements the in-flight count when a request is done, however it ends.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, config: &Config, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(ConnReader {
        stream,
        idle: true,
        shared: Arc::clone(shared),
    });
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let _in_flight = InFlight::start(shared);
        let request = match head.and_then(|h| http::parse_head(&h)) {
            Ok(request) => request,
            Err(err) => {
                log("-", "-", err.status());
                let body = err.message();
                http::write_head(
                    &mut writer,
                    err.status(),
                    &common_headers(config),
                    Some(body.len() as u64),
                    false,
                )?;
                writer.write_all(body.as_bytes())?;
                return Ok(());
            }
        };
        let keep_alive = handle(&request, &mut reader, &mut writer, config, shared)?
            && !shared.shutting_down.load(Ordering::SeqCst);
        if !keep_alive {
            return Ok(());
        }
    }
}

fn common_headers(config: &Config) -> [(&'static str, &str); 4] {
    [
        ("content-type", "text/plain; charset=utf-8"),
        ("server", "hangar-testapp"),
        ("x-version", &config.version),
        ("x-machine-id", &config.machine_id),
    ]
}

fn log(method: &str, path: &str, status: u16) {
    println!("{method} {path} {status}");
}

/// Handles one request; returns whether the connection can stay open.
fn handle(
    req: &Request,
    reader: &mut BufReader<ConnReader>,
    writer: &mut TcpStream,
    config: &Config,
    shared: &Shared,
) -> io::Result<bool> {
    let shutting_down = || shared.shutting_down.load(Ordering::SeqCst);
    let mut keep_alive = req.wants_keep_alive() && !shutting_down();
    let action = route(req, config);

    if action == Action::Crash {
        println!("{} {} crashing on request: exit 1", req.method, req.path);
        #[allow(clippy::exit)] // Dying on the spot, mid-request, is what /crash is for.
        std::process::exit(1);
    }

    if req.body != BodyKind::None && req.expects_continue() {
        http::write_head_continue(writer)?;
    }

    if action == Action::Echo {
        log(&req.method, &req.path, 200);
        let mut headers = common_headers(config).to_vec();
        headers[0] = ("content-type", "application/octet-stream");
        let length = match req.body {
            BodyKind::None => Some(0),
            BodyKind::Length(n) => Some(n),
            BodyKind::Chunked => None,
        };
        http::write_head(writer, 200, &headers, length, keep_alive)?;
        let mut body = BodyReader::new(reader, req.body);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            // Each piece goes back as soon as it arrives: the body is streamed, not
            // collected.
            if length.is_none() {
                write!(writer, "{n:x}\r\n")?;
                writer.write_all(&buf[..n])?;
                writer.write_all(b"\r\n")?;
            } else {
                writer.write_all(&buf[..n])?;
            }
        }
        if length.is_none() {
            writer.write_all(b"0\r\n\r\n")?;
        }
        return Ok(keep_alive);
    }

    // Other routes ignore the body, but it has to be read to find the next request.
    let drained = io::copy(&mut BodyReader::new(reader, req.body), &mut io::sink());
    if drained.is_err() {
        keep_alive = false;
    }

    let (status, body, allow) = match action {
        Action::Respond {
            status,
            body,
            allow,
        } => (status, body, allow),
        Action::Sleep(duration) => {
            // Announced, so a test can send SIGTERM knowing this request is in flight.
            println!(
                "{} {} sleeping {} ms",
                req.method,
                req.path,
                duration.as_millis()
            );
            std::thread::sleep(duration);
            (200, format!("slept {} ms\n", duration.as_millis()), None)
        }
        Action::Alloc(mb) => match alloc_and_hold(mb) {
            Ok(total) => (
                200,
                format!("allocated {mb} MiB, holding {total} MiB\n"),
                None,
            ),
            Err(err) => (507, format!("{err}\n"), None),
        },
        Action::Echo | Action::Crash => unreachable!("handled above"),
    };
    log(&req.method, &req.path, status);
    let keep_alive = keep_alive && !shutting_down();
    let mut headers = common_headers(config).to_vec();
    if let Some(allow) = allow {
        headers.push(("allow", allow));
    }
    let mut response = Vec::with_capacity(256 + body.len());
    http::write_head(
        &mut response,
        status,
        &headers,
        Some(body.len() as u64),
        keep_alive,
    )?;
    if req.method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    writer.write_all(&response)?;
    Ok(keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    fn config() -> Config {
        Config {
            port: 0,
            version: "v9".into(),
            machine_id: "feedfacecafe01".into(),
            unhealthy: false,
            unhealthy_file: PathBuf::from("/nonexistent/unhealthy"),
            ignore_signals: false,
            crash_on_boot: false,
        }
    }

    /// A server on a loopback port, shut down and joined when dropped.
    struct TestServer {
        addr: SocketAddr,
        handle: ShutdownHandle,
        thread: Option<JoinHandle<io::Result<usize>>>,
    }

    impl TestServer {
        fn start() -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let server = Server::from_listener(listener, config());
            let addr = server.local_addr().unwrap();
            let handle = server.shutdown_handle().unwrap();
            let thread = Some(std::thread::spawn(move || server.run()));
            TestServer {
                addr,
                handle,
                thread,
            }
        }

        fn connect(&self) -> TcpStream {
            let stream = TcpStream::connect(self.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        }

        /// Shuts down and returns how many requests were in flight then.
        fn stop(mut self) -> usize {
            self.handle.shutdown();
            self.thread.take().unwrap().join().unwrap().unwrap()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            if let Some(thread) = self.thread.take() {
                self.handle.shutdown();
                let _ = thread.join();
            }
        }
    }

    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    }

    impl Response {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Reads one response; `head_only` for answers to HEAD.
    fn read_response(reader: &mut BufReader<TcpStream>, head_only: bool) -> io::Result<Response> {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("status line {line:?}"))
            })?;
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
        let kind = if head_only || status == 100 {
            BodyKind::None
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked")
        {
            BodyKind::Chunked
        } else {
            BodyKind::Length(
                headers
                    .get("content-length")
                    .map_or(0, |v| v.parse().unwrap()),
            )
        };
        let mut body = Vec::new();
        BodyReader::new(reader, kind).read_to_end(&mut body)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn exchange(server: &TestServer, raw: &[u8]) -> Response {
        let mut stream = server.connect();
        stream.write_all(raw).unwrap();
        read_response(&mut BufReader::new(stream), raw.starts_with(b"HEAD")).unwrap()
    }

    #[test]
    fn hello_has_version_and_machine_headers() {
        let server = TestServer::start();
        let r = exchange(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello from feedfacecafe01 version v9\n");
        assert_eq!(r.headers["x-version"], "v9");
        assert_eq!(r.headers["x-machine-id"], "feedfacecafe01");
        assert_eq!(r.headers["connection"], "keep-alive");

        let r = exchange(&server, b"HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(r.headers["content-length"], "37");

        let r = exchange(&server, b"GET /health HTTP/1.0\r\n\r\n");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert_eq!(r.headers["connection"], "close");
        assert_eq!(
            exchange(&server, b"GET /missing HTTP/1.1\r\n\r\n").status,
            404
        );
        let r = exchange(
            &server,
            b"PUT /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!((r.status, r.headers["allow"].as_str()), (405, "GET, HEAD"));
        server.stop();
    }

    #[test]
    fn keep_alive_and_pipelining_on_one_connection() {
        let server = TestServer::start();
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut reader, false).unwrap().status, 200);
        // Two requests in one write, the first with a body the route ignores.
        writer
            .write_all(b"POST /missing HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /health HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader, false).unwrap().status, 404);
        assert_eq!(read_response(&mut reader, false).unwrap().text(), "ok");
        writer
            .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let last = read_response(&mut reader, false).unwrap();
        assert_eq!(last.headers["connection"], "close");
        let mut rest = Vec::new();
        assert_eq!(
            reader.read_to_end(&mut rest).unwrap(),
            0,
            "server closes after Connection: close"
        );
    }

    #[test]
    fn echo_streams_fixed_length_and_chunked_bodies() {
        let server = TestServer::start();
        let r = exchange(
            &server,
            b"POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
        );
        assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
        assert_eq!(r.headers["content-length"], "11");

        let r = exchange(
            &server,
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
        assert_eq!(r.headers["transfer-encoding"], "chunked");

        let r = exchange(&server, b"POST /echo HTTP/1.1\r\n\r\n");
        assert_eq!((r.status, r.body.len()), (200, 0));

        // A body larger than any buffer comes back intact, and the response starts before
        // the request body has been sent in full (it is streamed, not collected).
        let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let stream = server.connect();
        let mut writer = stream.try_clone().unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            big.len()
        );
        writer.write_all(head.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        assert_eq!(read_response(&mut reader, false).unwrap().status, 100);
        let sender = std::thread::spawn({
            let big = big.clone();
            move || writer.write_all(&big)
        });
        let r = read_response(&mut reader, false).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body == big, "echoed body differs");
    }

    #[test]
    fn slow_alloc_and_bad_requests() {
        let server = TestServer::start();
        let started = Instant::now();
        let r = exchange(&server, b"GET /slow?ms=120 HTTP/1.1\r\n\r\n");
        assert_eq!((r.status, r.text().as_str()), (200, "slept 120 ms\n"));
        assert!(started.elapsed() >= Duration::from_millis(120));

        let r = exchange(&server, b"GET /alloc?mb=1 HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(
            r.text().starts_with("allocated 1 MiB, holding "),
            "{}",
            r.text()
        );

        let r = exchange(&server, b"BROKEN\r\n\r\n");
        assert_eq!((r.status, r.headers["connection"].as_str()), (400, "close"));
        let r = exchange(&server, b"GET / HTTP/3\r\n\r\n");
        assert_eq!(r.status, 505);
        let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(exchange(&server, huge.as_bytes()).status, 431);
        let r = exchange(&server, b"GET /slow?ms=soon HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 400);
    }

    #[test]
    fn shutdown_finishes_in_flight_requests_and_closes_idle_connections() {
        let server = TestServer::start();
        // An idle keep-alive connection must not hold the shutdown up.
        let idle = server.connect();
        let mut idle_writer = idle.try_clone().unwrap();
        let mut idle_reader = BufReader::new(idle);
        idle_writer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut idle_reader, false).unwrap().status, 200);

        // The first request counts as in flight until just after its response is written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.handle.in_flight() != 0 {
            assert!(
                Instant::now() < deadline,
                "the first request never finished"
            );
            std::thread::yield_now();
        }
        let mut busy = server.connect();
        busy.write_all(b"GET /slow?ms=400 HTTP/1.1\r\n\r\n")
            .unwrap();
        while server.handle.in_flight() == 0 {
            assert!(Instant::now() < deadline, "the slow request never started");
            std::thread::yield_now();
        }
        let addr = server.addr;
        let started = Instant::now();
        let in_flight = server.stop();
        assert_eq!(in_flight, 1);
        // run() returned only after the slow request was answered.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        let r = read_response(&mut BufReader::new(busy), false).unwrap();
        assert_eq!((r.status, r.headers["connection"].as_str()), (200, "close"));
        let mut rest = Vec::new();
        assert_eq!(
            idle_reader.read_to_end(&mut rest).unwrap(),
            0,
            "idle connection closed"
        );
        assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    }
}
