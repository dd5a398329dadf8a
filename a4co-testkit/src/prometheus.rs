//! A real Prometheus for tests: a free loopback port, a temporary store, scraping the given
//! targets every second, optionally with rule files loaded; killed and cleaned up on drop.
//! Queries go through its HTTP API, as Grafana's would; [`check_rules`] runs `promtool`.
//!
//! The binaries come from `$PROMETHEUS_BIN` / `$PROMTOOL_BIN`, then `PATH` (`scripts/test`
//! installs Debian's `prometheus` package, which ships both, when they are missing).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use a4co_testkit::prometheus::Prometheus;
//!
//! let prometheus = Prometheus::start(&["127.0.0.1:8080".to_owned()], &[]).await;
//! let up = prometheus
//!     .eventually("up == 1", std::time::Duration::from_secs(10), |r| !r.is_empty())
//!     .await;
//! assert_eq!(up[0].labels["job"], "a4co");
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One element of a query's answer: its labels and value (instant vectors and scalars).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` included when the expression keeps it).
    pub labels: BTreeMap<String, String>,
    /// Its value (`NaN` and infinities as Prometheus gives them).
    pub value: f64,
}

/// A running Prometheus. Dropping it kills it and removes its store.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    client: a4co_http::Client,
}

/// A binary named by `variable`, else `name` on `PATH`.
fn binary(variable: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(variable).filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            format!(
                "{name} is needed by this test but was not found: run scripts/test (it installs \
                 Debian's prometheus package), or `apt-get install prometheus`, or set \
                 {variable} to the binary"
            )
        })
}

/// Runs `promtool check rules` on `file`: its output when the rules are valid.
///
/// # Errors
/// What promtool said was wrong, or why it could not run (not installed: how to get it).
pub fn check_rules(file: &Path) -> Result<String, String> {
    let promtool = binary("PROMTOOL_BIN", "promtool")?;
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .map_err(|e| format!("running {}: {e}", promtool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of each of `targets` (`host:port`) every
    /// second, as job `a4co` (label `instance` the target), with `rule_files` loaded and
    /// evaluated every second; returns once it is ready.
    ///
    /// # Panics
    /// When Prometheus is missing (the message says how to install it) or does not become
    /// ready within 30 s (the message has its log's tail): a broken machine, not a test
    /// failure to hide.
    pub async fn start(targets: &[String], rule_files: &[PathBuf]) -> Self {
        let bin = binary("PROMETHEUS_BIN", "prometheus").unwrap_or_else(|e| panic!("{e}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
        let dir = crate::nats::unique_dir("prometheus");
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": "a4co",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }],
        });
        // JSON is YAML: no YAML writer needed.
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_file.display()));
        let log = std::fs::File::create(dir.join("log"))
            .unwrap_or_else(|e| panic!("creating the log: {e}"));
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let url = format!("http://127.0.0.1:{port}");
        let client = a4co_http::Client::builder("prometheus", &url)
            .retry(a4co_http::retry::never())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let prometheus = Prometheus {
            child,
            port,
            dir,
            client,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while prometheus.client.get("/-/ready").send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not become ready within 30 s:\n{}",
                prometheus.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Evaluates `promql` now (`/api/v1/query`).
    ///
    /// # Errors
    /// What Prometheus answered when it refused the expression (a parse error names the
    /// position), or why it could not be asked.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let answer: serde_json::Value = match self.client.get(&path).send().await {
            Ok(response) => response.json().map_err(|e| e.to_string())?,
            // A refused expression is a 400 whose body says why.
            Err(e) => return Err(format!("{promql}: {e}")),
        };
        if answer["status"] != "success" {
            return Err(format!("{promql}: {answer}"));
        }
        let data = &answer["data"];
        let value = |v: &serde_json::Value| {
            v[1].as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| Sample {
                    labels: r["metric"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect(),
                    value: value(&r["value"]),
                })
                .collect()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"]),
            }]),
            other => Err(format!("{promql}: a {other:?} result is not read here")),
        }
    }

    /// Asks `promql` until `check` accepts the answer, and returns it.
    ///
    /// # Panics
    /// When `within` passes first (with the last answer), or the expression is refused.
    pub async fn eventually(
        &self,
        promql: &str,
        within: Duration,
        check: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answer = self
                .query(promql)
                .await
                .unwrap_or_else(|e| panic!("Prometheus refused it: {e}"));
            if check(&answer) {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{promql} never gave what was expected within {within:?}; last: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The alerts its rules have pending or firing now (`/api/v1/alerts`), by name.
    ///
    /// # Errors
    /// Why it could not be asked.
    pub async fn alerts(&self) -> Result<Vec<(String, String)>, String> {
        let answer: serde_json::Value = self
            .client
            .get_json("/api/v1/alerts")
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    a["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// The names of the rules it loaded, with their health (`ok`, `err`, `unknown`) and
    /// last error (`/api/v1/rules`).
    ///
    /// # Errors
    /// Why it could not be asked.
    pub async fn rules(&self) -> Result<Vec<(String, String, String)>, String> {
        let answer: serde_json::Value = self
            .client
            .get_json("/api/v1/rules")
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (text("name"), text("health"), text("lastError"))
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
