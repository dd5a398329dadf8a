//! A real HTTP/1.1 server on a loopback port whose routes answer from a script: statuses in
//! sequence, latency, a hang, a connection reset, `Retry-After`. It records what it
//! received, so tests assert on requests that did (or did not) reach it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use a4co_testkit::http::{FaultServer, Reply};
//!
//! let server = FaultServer::start().await;
//! server.script("GET /stock", [Reply::status(503), Reply::json(200, r#"{"units":3}"#)]);
//! // ... a client calls server.url("/stock") twice: 503, then 200 (the last reply repeats).
//! assert_eq!(server.hits("GET /stock"), 0);
//! # }
//! ```
//!
//! It speaks just enough HTTP/1.1 for clients such as reqwest: keep-alive, `Content-Length`
//! bodies (no chunked request bodies). A route is `"<METHOD> <path>"`, the path without the
//! query; unscripted routes answer 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a route answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    status: u16,
    body: String,
    content_type: &'static str,
    delay: Duration,
    retry_after: Option<String>,
    action: Action,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Answer,
    Hang,
    Reset,
}

impl Reply {
    /// A status with an empty body.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: String::new(),
            content_type: "text/plain",
            delay: Duration::ZERO,
            retry_after: None,
            action: Action::Answer,
        }
    }

    /// A status with a JSON body.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Reply {
            body: body.into(),
            content_type: "application/json",
            ..Reply::status(status)
        }
    }

    /// Never answers: the connection stays open and silent until the client gives up.
    pub fn hang() -> Self {
        Reply {
            action: Action::Hang,
            ..Reply::status(0)
        }
    }

    /// Resets the connection (TCP RST) instead of answering.
    pub fn reset() -> Self {
        Reply {
            action: Action::Reset,
            ..Reply::status(0)
        }
    }

    /// Answers after `delay`.
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds `Retry-After` with this value (seconds, or an HTTP date).
    #[must_use]
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }
}

/// A request as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query, as sent.
    pub target: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The request body as received, whole (empty for none).
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Route {
    script: Vec<Reply>,
    next: usize,
    received: Vec<Received>,
}

type Routes = Arc<Mutex<HashMap<String, Route>>>;

/// The scripted server. Dropping it stops it.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    routes: Routes,
    task: JoinHandle<()>,
}

impl FaultServer {
    /// Starts on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken machine, not a test failure to hide).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("FaultServer: cannot bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("FaultServer: no local address: {e}"));
        let routes: Routes = Arc::default();
        let task = tokio::spawn(accept(listener, Arc::clone(&routes)));
        FaultServer { addr, routes, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of a path on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Scripts a route (`"GET /path"`): the replies answer requests in order, and the last
    /// one keeps answering. Replaces any earlier script and starts it over.
    ///
    /// # Panics
    /// On an empty script.
    pub fn script(&self, route: &str, replies: impl IntoIterator<Item = Reply>) {
        let script: Vec<Reply> = replies.into_iter().collect();
        assert!(!script.is_empty(), "a script needs at least one reply");
        let mut routes = lock(&self.routes);
        let entry = routes.entry(route.to_owned()).or_default();
        entry.script = script;
        entry.next = 0;
    }

    /// How many requests reached a route.
    pub fn hits(&self, route: &str) -> usize {
        lock(&self.routes)
            .get(route)
            .map_or(0, |r| r.received.len())
    }

    /// The requests a route received, oldest first.
    pub fn received(&self, route: &str) -> Vec<Received> {
        lock(&self.routes)
            .get(route)
            .map(|r| r.received.clone())
            .unwrap_or_default()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(routes: &Routes) -> MutexGuard<'_, HashMap<String, Route>> {
    routes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: TcpListener, routes: Routes) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(stream, Arc::clone(&routes)));
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// One connection: requests in sequence (keep-alive) until the client closes it.
async fn serve(mut stream: TcpStream, routes: Routes) {
    let mut buf = Vec::with_capacity(4096);
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        let path = request.target.split('?').next().unwrap_or_default();
        let route = format!("{} {path}", request.method);
        let reply = {
            let mut routes = lock(&routes);
            let entry = routes.entry(route).or_default();
            entry.received.push(request);
            let reply = entry.script.get(entry.next).cloned();
            if entry.next + 1 < entry.script.len() {
                entry.next += 1;
            }
            reply.unwrap_or_else(|| Reply::status(404))
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        match reply.action {
            Action::Hang => {
                // Hold the connection open, silent, until the client drops it.
                let mut sink = [0_u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Action::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Action::Answer => {
                if stream.write_all(&response(&reply)).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn response(reply: &Reply) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if let Some(after) = &reply.retry_after {
        head.push_str(&format!("retry-after: {after}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(reply.body.as_bytes());
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads one request; `None` when the client closed the connection or sent garbage.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, target) = (
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + length].to_vec();
    buf.drain(..body_start + length);
    Some(Received {
        method,
        target,
        headers,
        body,
    })
}

/// A shared secret for service tokens in tests (never use it outside them).
pub fn test_secret() -> a4co_http::auth::Secret {
    a4co_http::auth::Secret::new("a4co-testkit-secret-only-for-tests!!")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A client for a service's routes called in process (an axum `Router`, any tower service):
/// no retries, so a test sees every answer; with `permissions`, tokens of `caller` signed
/// with [`test_secret`]; without, no token at all.
///
/// # Panics
/// The client cannot be built (a bug in the test).
pub fn in_process<S>(
    target: &str,
    service: S,
    caller: &str,
    permissions: &[&str],
) -> a4co_http::Client
where
    S: tower_service::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::http::Response<axum::body::Body>,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    let mut builder = a4co_http::Client::builder(target, format!("http://{target}"))
        .in_process(service)
        .retry(a4co_http::retry::never());
    if !permissions.is_empty() {
        builder = builder.service_auth(a4co_http::auth::Issuer::new(
            test_secret(),
            caller,
            permissions.iter().copied(),
        ));
    }
    builder.build().unwrap_or_else(|e| panic!("{e}"))
}
