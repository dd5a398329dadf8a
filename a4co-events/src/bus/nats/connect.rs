//! How to reach NATS: servers, credentials, TLS, replicas; read from code or from the
//! `NATS_*` variables, checked before the first byte is sent, and never printed with a
//! secret in it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{ConnectError, ConnectErrorKind};

/// Where each setting came from, so an error names what the user has to change: the
/// builder method, or the environment variable.
#[derive(Debug)]
struct Names {
    urls: &'static str,
    user_password: &'static str,
    token: &'static str,
    nkey_seed: &'static str,
    nkey_seed_file: &'static str,
    creds_file: &'static str,
    tls_ca: &'static str,
    tls_cert: &'static str,
    replicas: &'static str,
    any_credential: &'static str,
}

const CODE: Names = Names {
    urls: "the URL (Config::new)",
    user_password: "Config::user_and_password",
    token: "Config::token",
    nkey_seed: "Config::nkey_seed",
    nkey_seed_file: "Config::nkey_seed_file",
    creds_file: "Config::credentials_file",
    tls_ca: "Config::tls_ca_file",
    tls_cert: "Config::tls_client_certificate",
    replicas: "Config::replicas",
    any_credential: "Config::user_and_password, token, nkey_seed, nkey_seed_file or \
                     credentials_file",
};

const ENV: Names = Names {
    urls: "NATS_URL",
    user_password: "NATS_USER/NATS_PASSWORD",
    token: "NATS_TOKEN",
    nkey_seed: "NATS_NKEY_SEED_FILE",
    nkey_seed_file: "NATS_NKEY_SEED_FILE",
    creds_file: "NATS_CREDS_FILE",
    tls_ca: "NATS_TLS_CA_FILE",
    tls_cert: "NATS_TLS_CERT_FILE/NATS_TLS_KEY_FILE",
    replicas: "NATS_REPLICAS",
    any_credential: "NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED_FILE or \
                     NATS_CREDS_FILE",
};

/// A value that is never printed.
#[derive(Clone)]
struct Secret(Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the client proves who it is.
#[derive(Clone, Debug)]
enum Auth {
    UserPassword { user: String, password: Secret },
    Token(Secret),
    NkeySeed(Secret),
    NkeySeedFile(PathBuf),
    CredsFile(PathBuf),
}

impl Auth {
    fn setting(&self, names: &Names) -> &'static str {
        match self {
            Auth::UserPassword { .. } => names.user_password,
            Auth::Token(_) => names.token,
            Auth::NkeySeed(_) => names.nkey_seed,
            Auth::NkeySeedFile(_) => names.nkey_seed_file,
            Auth::CredsFile(_) => names.creds_file,
        }
    }
}

/// How to reach NATS: the servers, the connection's name, credentials, TLS, how many
/// replicas the streams and buckets it creates get, and timeouts.
///
/// ```
/// use a4co_events::bus::nats::Config;
///
/// let config = Config::new("nats://a:4222,nats://b:4222")
///     .name("order-service")
///     .user_and_password("orders", "s3cret")
///     .tls_ca_file("/etc/nats/ca.pem")
///     .replicas(3);
/// // Nothing secret in what it prints.
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
///
/// A URL may carry credentials (`nats://user:password@host`, `nats://token@host`): they are
/// taken from it, and the URL is shown as `nats://user:***@host`. Every setting is checked
/// when [`super::NatsBus::connect`] runs; an error names the setting to fix (the builder
/// method, or the variable for a config from [`Config::from_env`]).
#[derive(Clone)]
#[must_use]
pub struct Config {
    pub(super) urls: String,
    pub(super) client: Option<async_nats::Client>,
    pub(super) name: Option<String>,
    auth: Option<Auth>,
    tls_ca: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    pub(super) replicas: usize,
    pub(super) ack_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) max_ack_inflight: usize,
    names: &'static Names,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = self.auth.as_ref().map(|a| match a {
            Auth::UserPassword { user, .. } => format!("user {user:?} with a password"),
            Auth::Token(_) => "a token".to_owned(),
            Auth::NkeySeed(_) => "an nkey seed".to_owned(),
            Auth::NkeySeedFile(p) => format!("the nkey seed in {}", p.display()),
            Auth::CredsFile(p) => format!("the credentials in {}", p.display()),
        });
        f.debug_struct("Config")
            .field("urls", &self.shown_urls())
            .field("client", &self.client.is_some())
            .field("name", &self.name)
            .field("auth", &auth)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("replicas", &self.replicas)
            .field("ack_timeout", &self.ack_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_ack_inflight", &self.max_ack_inflight)
            .finish()
    }
}

impl Config {
    /// The server(s): one URL, or several separated by commas (`nats://a:4222,nats://b:4222`).
    pub fn new(urls: impl Into<String>) -> Self {
        Config {
            urls: urls.into(),
            client: None,
            name: None,
            auth: None,
            tls_ca: None,
            tls_client: None,
            replicas: 1,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_ack_inflight: 4096,
            names: &CODE,
        }
    }

    /// A connection the team set up itself (its own auth callback, TLS config, ...). The
    /// bus still checks the server. Permission violations on publish are seen only on
    /// connections the bus opens: on this one, a denied publish ends as a timeout.
    pub fn from_client(client: async_nats::Client) -> Self {
        let mut config = Config::new("");
        config.client = Some(client);
        config
    }

    /// The settings in the environment, or `None` when `NATS_URL` is unset or empty:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `NATS_URL` | server URL(s), comma-separated seeds |
    /// | `NATS_USER` + `NATS_PASSWORD` | user and password |
    /// | `NATS_TOKEN` | token |
    /// | `NATS_NKEY_SEED_FILE` | file holding an nkey user seed (`SU...`) |
    /// | `NATS_CREDS_FILE` | credentials file (user JWT + nkey seed) |
    /// | `NATS_TLS_CA_FILE` | CA certificate(s) to trust (PEM); turns TLS on |
    /// | `NATS_TLS_CERT_FILE` + `NATS_TLS_KEY_FILE` | client certificate and key (PEM), mutual TLS |
    /// | `NATS_REPLICAS` | copies of every stream and bucket, 1 to 5 (default 1) |
    ///
    /// # Errors
    /// [`ConnectErrorKind::InvalidConfig`] naming the variable: a half pair, two kinds of
    /// credential at once, a replica count out of range, credentials without `NATS_URL`.
    pub fn from_env() -> Result<Option<Config>, ConnectError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Config::from_env`] with `NATS_URL` taken to be `url` (a tool's `--url`, say):
    /// the credentials, TLS and replicas still come from the other variables.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_env_at(url: &str) -> Result<Config, ConnectError> {
        Ok(Self::from_vars(|name| match name {
            "NATS_URL" => Some(url.to_owned()),
            _ => std::env::var(name).ok(),
        })?
        .unwrap_or_else(|| Config::new(url)))
    }

    /// As [`Config::from_env`], reading each variable through `var` (tests, or settings
    /// kept elsewhere).
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Config>, ConnectError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let invalid = |m: String| ConnectError::new(ConnectErrorKind::InvalidConfig, m);
        let mut auths = Vec::new();
        match (get("NATS_USER"), get("NATS_PASSWORD")) {
            (Some(user), Some(password)) => auths.push(Auth::UserPassword {
                user,
                password: Secret(password.into()),
            }),
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid("NATS_USER is set without NATS_PASSWORD".into()));
            }
            (None, Some(_)) => {
                return Err(invalid("NATS_PASSWORD is set without NATS_USER".into()));
            }
        }
        if let Some(token) = get("NATS_TOKEN") {
            auths.push(Auth::Token(Secret(token.into())));
        }
        if let Some(file) = get("NATS_NKEY_SEED_FILE") {
            auths.push(Auth::NkeySeedFile(file.into()));
        }
        if let Some(file) = get("NATS_CREDS_FILE") {
            auths.push(Auth::CredsFile(file.into()));
        }
        if auths.len() > 1 {
            let set: Vec<&str> = auths.iter().map(|a| a.setting(&ENV)).collect();
            return Err(invalid(format!(
                "{} are all set: set one kind of credential",
                set.join(" and ")
            )));
        }
        let tls_ca = get("NATS_TLS_CA_FILE").map(PathBuf::from);
        let tls_client = match (get("NATS_TLS_CERT_FILE"), get("NATS_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "NATS_TLS_CERT_FILE is set without NATS_TLS_KEY_FILE".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "NATS_TLS_KEY_FILE is set without NATS_TLS_CERT_FILE".into(),
                ));
            }
        };
        let replicas = match get("NATS_REPLICAS") {
            None => 1,
            Some(v) => v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| {
                    invalid(format!(
                        "NATS_REPLICAS={v:?}: expected a number of replicas from 1 to 5"
                    ))
                })?,
        };
        let Some(urls) = get("NATS_URL") else {
            let stray = [
                "NATS_USER",
                "NATS_PASSWORD",
                "NATS_TOKEN",
                "NATS_NKEY_SEED_FILE",
                "NATS_CREDS_FILE",
                "NATS_TLS_CA_FILE",
                "NATS_TLS_CERT_FILE",
                "NATS_TLS_KEY_FILE",
                "NATS_REPLICAS",
            ]
            .into_iter()
            .filter(|name| get(name).is_some())
            .collect::<Vec<_>>();
            if stray.is_empty() {
                return Ok(None);
            }
            return Err(invalid(format!(
                "{} set but NATS_URL is not: set NATS_URL to the server(s), or unset them \
                 to run on the in-memory bus",
                stray.join(", ")
            )));
        };
        let mut config = Config::new(urls);
        config.auth = auths.pop();
        config.tls_ca = tls_ca;
        config.tls_client = tls_client;
        config.replicas = replicas;
        config.names = &ENV;
        Ok(Some(config))
    }

    /// The connection's name, as servers and monitoring show it (the service's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Authenticate with a user and password (replaces other credentials).
    pub fn user_and_password(mut self, user: impl Into<String>, password: impl AsRef<str>) -> Self {
        self.auth = Some(Auth::UserPassword {
            user: user.into(),
            password: Secret(password.as_ref().into()),
        });
        self
    }

    /// Authenticate with a token (replaces other credentials).
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        self.auth = Some(Auth::Token(Secret(token.as_ref().into())));
        self
    }

    /// Authenticate with an nkey user seed (`SU...`; replaces other credentials).
    pub fn nkey_seed(mut self, seed: impl AsRef<str>) -> Self {
        self.auth = Some(Auth::NkeySeed(Secret(seed.as_ref().trim().into())));
        self
    }

    /// Authenticate with the nkey user seed in `path` (read at connect; replaces other
    /// credentials).
    pub fn nkey_seed_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Some(Auth::NkeySeedFile(path.into()));
        self
    }

    /// Authenticate with a credentials file (a user JWT and its nkey seed, as `nsc`
    /// writes them; read at connect; replaces other credentials). An expired JWT is refused
    /// before connecting.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Some(Auth::CredsFile(path.into()));
        self
    }

    /// Trust the CA certificate(s) in `path` (PEM) for the servers' certificates, and
    /// require TLS.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM) to servers that verify clients
    /// (mutual TLS), and require TLS.
    pub fn tls_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }

    /// How many copies of every stream and KV bucket this connection creates (1 to 5;
    /// default 1, 3 for a production cluster). Existing ones that differ are reported as
    /// drift, not changed.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// How long to wait for a publish acknowledgement (and any JetStream API call).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// How long the first connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many pipelined publishes may await their acknowledgement at once; more wait.
    pub fn max_ack_inflight(mut self, n: usize) -> Self {
        self.max_ack_inflight = n;
        self
    }

    /// The server URLs as they may be shown: credentials in them replaced by `***`.
    pub fn shown_urls(&self) -> String {
        if self.client.is_some() {
            return "the given client".to_owned();
        }
        seeds(&self.urls)
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn invalid(&self, message: String) -> ConnectError {
        ConnectError::new(ConnectErrorKind::InvalidConfig, message)
    }

    /// Checks every setting and builds the client options and server list.
    pub(super) fn options(
        &self,
    ) -> Result<(async_nats::ConnectOptions, Vec<async_nats::ServerAddr>), ConnectError> {
        let (addrs, url_auth) = self.servers()?;
        let auth = match (&self.auth, url_auth) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(format!(
                    "{} carries credentials and {} is set too: keep one",
                    self.names.urls,
                    self.auth.as_ref().map_or("", |a| a.setting(self.names))
                )));
            }
            (Some(auth), None) => Some(auth.clone()),
            (None, url_auth) => url_auth,
        };
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout)
            .max_reconnects(None);
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        match auth {
            None => {}
            Some(Auth::UserPassword { user, password }) => {
                options = options.user_and_password(user, password.0.to_string());
            }
            Some(Auth::Token(token)) => options = options.token(token.0.to_string()),
            Some(Auth::NkeySeed(seed)) => {
                options = options.nkey(self.check_seed(&seed.0, self.names.nkey_seed)?);
            }
            Some(Auth::NkeySeedFile(path)) => {
                let seed = self.read(&path, self.names.nkey_seed_file)?;
                options = options.nkey(self.check_seed(seed.trim(), self.names.nkey_seed_file)?);
            }
            Some(Auth::CredsFile(path)) => {
                let creds = self.read(&path, self.names.creds_file)?;
                self.check_creds(&creds, &path)?;
                options = options.credentials(&creds).map_err(|e| {
                    self.invalid(format!(
                        "{}: {} is not a credentials file: {e}",
                        self.names.creds_file,
                        path.display()
                    ))
                })?;
            }
        }
        if let Some(ca) = &self.tls_ca {
            self.read(ca, self.names.tls_ca)?;
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            self.read(cert, self.names.tls_cert)?;
            self.read(key, self.names.tls_cert)?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok((options, addrs))
    }

    /// The server list without credentials, and the credentials the URLs carried.
    fn servers(&self) -> Result<(Vec<async_nats::ServerAddr>, Option<Auth>), ConnectError> {
        let mut addrs = Vec::new();
        let mut found: Option<(String, Option<String>)> = None;
        for seed in seeds(&self.urls) {
            let addr = seed.parse::<async_nats::ServerAddr>().map_err(|_| {
                self.invalid(format!(
                    "{}: {:?} is not a NATS URL (expected nats://host:port, or tls://; a \
                     password holding '/', '@' or '%' must be percent-encoded)",
                    self.names.urls,
                    redact_url(seed)
                ))
            })?;
            if let Some(user) = addr.username() {
                let userinfo = (percent_decode(user), addr.password().map(percent_decode));
                if found.as_ref().is_some_and(|f| *f != userinfo) {
                    return Err(self.invalid(format!(
                        "{}: the URLs carry different credentials; give them once",
                        self.names.urls
                    )));
                }
                found = Some(userinfo);
            }
            let mut url = addr.into_inner();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            addrs.push(async_nats::ServerAddr::from_url(url).map_err(|_| {
                self.invalid(format!(
                    "{}: {:?} is not a NATS URL",
                    self.names.urls,
                    redact_url(seed)
                ))
            })?);
        }
        if addrs.is_empty() {
            return Err(self.invalid(format!("{}: no NATS URL given", self.names.urls)));
        }
        let auth = found.map(|(user, password)| match password {
            Some(password) => Auth::UserPassword {
                user,
                password: Secret(password.into()),
            },
            None => Auth::Token(Secret(user.into())),
        });
        Ok((addrs, auth))
    }

    fn read(&self, path: &Path, setting: &str) -> Result<String, ConnectError> {
        std::fs::read_to_string(path)
            .map_err(|e| self.invalid(format!("{setting}: cannot read {}: {e}", path.display())))
    }

    fn check_seed(&self, seed: &str, setting: &str) -> Result<String, ConnectError> {
        match nkeys::KeyPair::from_seed(seed) {
            Ok(pair) if pair.public_key().starts_with('U') => Ok(seed.to_owned()),
            _ => Err(self.invalid(format!(
                "{setting}: not an nkey user seed (one line starting with SU)"
            ))),
        }
    }

    /// Refuses an unreadable or expired user JWT before the server does, with the date.
    fn check_creds(&self, creds: &str, path: &Path) -> Result<(), ConnectError> {
        let setting = self.names.creds_file;
        let not_creds = || {
            self.invalid(format!(
                "{setting}: {} is not a credentials file (no user JWT in it)",
                path.display()
            ))
        };
        let jwt = creds
            .lines()
            .skip_while(|l| !l.contains("BEGIN NATS USER JWT"))
            .nth(1)
            .map(str::trim)
            .ok_or_else(not_creds)?;
        let claims = jwt
            .split('.')
            .nth(1)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or_else(not_creds)?;
        if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64) {
            let now = chrono::Utc::now().timestamp();
            if exp <= now {
                let when = chrono::DateTime::from_timestamp(exp, 0)
                    .map_or_else(|| exp.to_string(), |t| t.to_rfc3339());
                return Err(ConnectError::new(
                    ConnectErrorKind::Unauthorized,
                    format!(
                        "{setting}: the user JWT in {} expired at {when}: issue new credentials",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Turns a failed connect into an error naming the setting to fix.
    pub(super) fn connect_failure(&self, e: async_nats::ConnectError) -> ConnectError {
        use async_nats::ConnectErrorKind as K;
        let names = self.names;
        let chain = error_chain(&e);
        let lower = chain.to_lowercase();
        let auth = match &self.auth {
            Some(auth) => Some(auth.setting(names).to_owned()),
            None => self
                .urls
                .contains('@')
                .then(|| format!("{} {}", names.urls, self.shown_urls())),
        };
        let (kind, message) = match e.kind() {
            K::AuthorizationViolation | K::Authentication => match auth {
                Some(setting) => (
                    ConnectErrorKind::Unauthorized,
                    format!(
                        "the server refused the credentials of {setting} (wrong, expired or \
                         revoked)"
                    ),
                ),
                None => (
                    ConnectErrorKind::Unauthorized,
                    format!(
                        "the server requires credentials: set {}",
                        names.any_credential
                    ),
                ),
            },
            _ if lower.contains("unknownissuer") || lower.contains("invalid peer certificate") => (
                ConnectErrorKind::Tls,
                match &self.tls_ca {
                    Some(_) => format!(
                        "the server's certificate is not signed by the CA in {}",
                        names.tls_ca
                    ),
                    None => format!(
                        "the server's certificate is not trusted: set {} to the CA that signed it",
                        names.tls_ca
                    ),
                },
            ),
            _ if lower.contains("certificaterequired")
                || lower.contains("certificate required")
                || lower.contains("badcertificate")
                || lower.contains("bad certificate")
                || lower.contains("certificateexpired")
                || lower.contains("certificate expired")
                || lower.contains("unknownca")
                || lower.contains("unknown ca") =>
            {
                (
                    ConnectErrorKind::Tls,
                    match &self.tls_client {
                        Some(_) => format!(
                            "the server refused the client certificate of {} (expired, or not \
                             signed by a CA it trusts)",
                            names.tls_cert
                        ),
                        None => format!(
                            "the server requires a client certificate: set {}",
                            names.tls_cert
                        ),
                    },
                )
            }
            _ if (self.tls_ca.is_some() || self.tls_client.is_some())
                && (lower.contains("invalidcontenttype") || lower.contains("corrupt message")) =>
            {
                let setting = if self.tls_ca.is_some() {
                    names.tls_ca
                } else {
                    names.tls_cert
                };
                (
                    ConnectErrorKind::Tls,
                    format!(
                        "the server does not offer TLS, which {setting} asks for: connect to a \
                         TLS listener, or unset {setting}"
                    ),
                )
            }
            K::Tls => (
                ConnectErrorKind::Tls,
                format!("TLS failed: check {} and {}", names.tls_ca, names.tls_cert),
            ),
            _ if lower.contains("tls") && self.tls_ca.is_none() && self.tls_client.is_none() => (
                ConnectErrorKind::Tls,
                format!(
                    "the server requires TLS: set {} (and {} if it verifies clients)",
                    names.tls_ca, names.tls_cert
                ),
            ),
            _ => (
                ConnectErrorKind::Unavailable,
                format!(
                    "no NATS server answered at {} ({})",
                    self.shown_urls(),
                    names.urls
                ),
            ),
        };
        ConnectError::new(kind, message).with_source(redact_text(&chain, self))
    }

    /// Refuses a replica count JetStream cannot take, naming the setting.
    pub(super) fn check_replicas(&self) -> Result<(), ConnectError> {
        if (1..=5).contains(&self.replicas) {
            return Ok(());
        }
        Err(self.invalid(format!(
            "{}: {} replicas; expected 1 to 5",
            self.names.replicas, self.replicas
        )))
    }
}

/// The error and its sources, one line (a source that repeats its cause's text once).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    for text in crate::error::chain(e) {
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// `text` with every credential of `config` blanked (a library's message may quote one).
fn redact_text(text: &str, config: &Config) -> String {
    let mut out = text.to_owned();
    let mut secrets: Vec<String> = Vec::new();
    match &config.auth {
        Some(Auth::UserPassword { password, .. }) => secrets.push(password.0.to_string()),
        Some(Auth::Token(t) | Auth::NkeySeed(t)) => secrets.push(t.0.to_string()),
        _ => {}
    }
    for seed in seeds(&config.urls) {
        if let Some((userinfo, _)) = userinfo(seed) {
            secrets.push(userinfo.to_owned());
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_owned());
            }
        }
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// The seeds of a comma-separated server list, trimmed, empty ones left out. A comma starts
/// a new seed only where what follows is a URL or a plain `host[:port]`, so a password
/// holding a comma stays in its seed (and is redacted with it).
fn seeds(urls: &str) -> impl Iterator<Item = &str> {
    let mut seeds: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, _) in urls.match_indices(',') {
        let next = urls[i + 1..].trim_start();
        let piece = next.split(',').next().unwrap_or_default();
        let new_seed = match (piece.find("://"), piece.find('@')) {
            (Some(scheme), Some(at)) => scheme < at,
            (Some(_), None) => true,
            (None, at) => at.is_none() && plain_host(piece.split('/').next().unwrap_or_default()),
        };
        if new_seed {
            seeds.push(&urls[start..i]);
            start = i + 1;
        }
    }
    seeds.push(&urls[start..]);
    seeds.into_iter().map(str::trim).filter(|s| !s.is_empty())
}

/// Whether `authority` is a plain `host[:port]` (no user info).
fn plain_host(authority: &str) -> bool {
    !authority.contains('@')
        && authority
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
}

/// The user-info part of `url` (`user:password` or `token`) and what follows it. The user
/// info runs to the last `@` of the seed, so a password holding `/`, `,` or `@` (not
/// percent-encoded) is all in it; a seed whose text before its first `/` is a plain
/// `host[:port]` has none (an `@` after it is in the path).
fn userinfo(url: &str) -> Option<(&str, &str)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let first = rest.find('/').unwrap_or(rest.len());
    if plain_host(&rest[..first]) {
        return None;
    }
    let at = rest.rfind('@')?;
    Some((&rest[..at], &rest[at + 1..]))
}

/// `url` with its password or token replaced by `***`: `nats://user:***@host:4222`,
/// `nats://***@host:4222`. Works on text that does not parse as a URL too.
pub fn redact_url(url: &str) -> String {
    let Some((info, host)) = userinfo(url) else {
        return url.to_owned();
    };
    let scheme = url.find("://").map_or("", |i| &url[..i + 3]);
    match info.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***@{host}"),
        None => format!("{scheme}***@{host}"),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_show_no_secret() {
        assert_eq!(
            redact_url("nats://app:s3cret@h:4222"),
            "nats://app:***@h:4222"
        );
        assert_eq!(redact_url("nats://tok3n@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("app:p@ss@h"), "app:***@h");
        assert_eq!(redact_url("tls://h:4222"), "tls://h:4222");
        assert_eq!(redact_url("nats://h:4222/a@b"), "nats://h:4222/a@b");
        // Guards against: a password holding `/` or `,` (not percent-encoded) escaped.
        assert_eq!(
            redact_url("nats://app:pa/ss@h:4222"),
            "nats://app:***@h:4222"
        );
        assert_eq!(
            Config::new("nats://app:pa,ss@a:4222,nats://app:pa,ss@b:4222").shown_urls(),
            "nats://app:***@a:4222,nats://app:***@b:4222"
        );
        let config = Config::new("nats://app:pa,s/s@a:4222");
        let text = redact_text("cannot parse nats://app:pa,s/s@a:4222 (pa,s/s)", &config);
        assert!(!text.contains("pa,s/s"), "{text}");
        let config = Config::new("nats://app:s3cret@a:4222, nats://app:s3cret@b:4222");
        assert_eq!(
            config.shown_urls(),
            "nats://app:***@a:4222,nats://app:***@b:4222"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        let config = Config::new("nats://h").token("tok3n").nkey_seed("SUxyz");
        assert!(!format!("{config:?}").contains("SUxyz"));
    }

    #[test]
    fn url_credentials_are_used_and_decoded() {
        let config = Config::new("nats://app:p%40ss@127.0.0.1:4222");
        let (addrs, auth) = config.servers().unwrap();
        assert_eq!(addrs[0].as_url_str(), "nats://127.0.0.1:4222");
        match auth {
            Some(Auth::UserPassword { user, password }) => {
                assert_eq!((user.as_str(), &*password.0), ("app", "p@ss"));
            }
            other => panic!("{other:?}"),
        }
        let err = Config::new("nats://a:1@h,nats://b:2@h")
            .options()
            .unwrap_err();
        assert!(err.to_string().contains("different credentials"), "{err}");
        let err = Config::new("nats://a:1@h")
            .token("t")
            .options()
            .unwrap_err();
        assert_eq!(err.kind(), ConnectErrorKind::InvalidConfig);
        assert!(!err.to_string().contains(":1@"), "{err}");
    }

    #[test]
    fn env_settings_are_checked_and_named() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(Config::from_vars(vars(&[])).unwrap().is_none());
        let config = Config::from_vars(vars(&[
            ("NATS_URL", "nats://h:4222"),
            ("NATS_USER", "app"),
            ("NATS_PASSWORD", "s3cret"),
            ("NATS_REPLICAS", "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.replicas, 3);
        assert!(matches!(config.auth, Some(Auth::UserPassword { .. })));
        let error = |pairs| Config::from_vars(vars(pairs)).unwrap_err().to_string();
        assert!(error(&[("NATS_URL", "nats://h"), ("NATS_USER", "app")]).contains("NATS_PASSWORD"));
        assert!(
            error(&[
                ("NATS_URL", "nats://h"),
                ("NATS_TOKEN", "t"),
                ("NATS_CREDS_FILE", "f")
            ])
            .contains("NATS_TOKEN and NATS_CREDS_FILE")
        );
        assert!(
            error(&[("NATS_URL", "nats://h"), ("NATS_REPLICAS", "7")])
                .contains("NATS_REPLICAS=\"7\"")
        );
        assert!(error(&[("NATS_TLS_KEY_FILE", "k")]).contains("NATS_TLS_CERT_FILE"));
        assert!(error(&[("NATS_TOKEN", "t")]).contains("NATS_TOKEN set but NATS_URL is not"));
    }

    #[test]
    fn files_and_seeds_are_checked_before_connecting() {
        let missing = Config::from_vars(|n| {
            (match n {
                "NATS_URL" => Some("nats://h"),
                "NATS_CREDS_FILE" => Some("/nonexistent/a4co.creds"),
                _ => None,
            })
            .map(str::to_owned)
        })
        .unwrap()
        .unwrap();
        let err = missing.options().unwrap_err();
        assert_eq!(err.kind(), ConnectErrorKind::InvalidConfig);
        assert!(
            err.to_string()
                .contains("NATS_CREDS_FILE: cannot read /nonexistent/a4co.creds"),
            "{err}"
        );
        let err = Config::new("nats://h")
            .nkey_seed("SUnotaseed")
            .options()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Config::nkey_seed: not an nkey user seed"),
            "{err}"
        );
        assert!(!err.to_string().contains("SUnotaseed"));
        let err = Config::new("nats://h")
            .replicas(0)
            .check_replicas()
            .unwrap_err();
        assert!(err.to_string().contains("Config::replicas"), "{err}");
    }
}
