//! The client: one per target service, a cheap `Clone` handle over one connection pool.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::breaker::{self, Breaker};
use crate::error::{ConfigError, Error, Kind};
use crate::limit::Limit;
use crate::retry::{self, Tokens};
use crate::telemetry::{self, Metrics};

/// Decides which failed attempts count against the circuit breaker.
type Classifier = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// An answer for a call whose target is unavailable.
type Fallback = Box<dyn FnOnce(&Error) -> Response + Send + Sync>;

#[cfg(feature = "in-process")]
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(feature = "in-process")]
/// The in-process target of [`ClientBuilder::in_process`], type-erased.
type ServiceFn = Arc<
    dyn Fn(
            axum::http::Request<axum::body::Body>,
        ) -> std::pin::Pin<
            Box<
                dyn Future<Output = Result<axum::http::Response<axum::body::Body>, BoxError>>
                    + Send,
            >,
        > + Send
        + Sync,
>;

/// How attempts reach the target: over HTTP, or to a service in this process.
#[derive(Clone)]
enum Exchange {
    Http(reqwest::Client),
    #[cfg(feature = "in-process")]
    InProcess(ServiceFn),
}

/// What one attempt produced: status, headers, body.
type Exchanged = (StatusCode, header::HeaderMap, bytes::Bytes);

/// Why an attempt got no response.
enum ExchangeError {
    Http(reqwest::Error),
    #[cfg(feature = "in-process")]
    InProcess(BoxError),
}

#[cfg(feature = "in-process")]
/// The most of a response body an in-process service may return (as for any HTTP answer,
/// the whole body is read into memory).
const MAX_SERVICE_BODY: usize = 64 * 1024 * 1024;

impl Exchange {
    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: header::HeaderMap,
        body: Option<bytes::Bytes>,
    ) -> Result<Exchanged, ExchangeError> {
        match self {
            Exchange::Http(http) => {
                let mut request = reqwest::Request::new(method, url);
                *request.headers_mut() = headers;
                *request.body_mut() = body.map(reqwest::Body::from);
                let exchange = async {
                    let mut response = http.execute(request).await?;
                    let status = response.status();
                    let headers = std::mem::take(response.headers_mut());
                    Ok((status, headers, response.bytes().await?))
                };
                exchange.await.map_err(ExchangeError::Http)
            }
            // Boxed: in-process targets are for tests and tools, and their futures would
            // otherwise make every HTTP call's future (moved on each await) larger.
            #[cfg(feature = "in-process")]
            Exchange::InProcess(service) => {
                Box::pin(async move {
                    let mut request = axum::http::Request::new(
                        body.map_or_else(axum::body::Body::empty, axum::body::Body::from),
                    );
                    *request.method_mut() = method;
                    *request.headers_mut() = headers;
                    *request.uri_mut() = url
                        .as_str()
                        .parse()
                        .map_err(|e| ExchangeError::InProcess(Box::new(e)))?;
                    let response = service(request).await.map_err(ExchangeError::InProcess)?;
                    let (parts, body) = response.into_parts();
                    let body = axum::body::to_bytes(body, MAX_SERVICE_BODY)
                        .await
                        .map_err(|e| ExchangeError::InProcess(Box::new(e)))?;
                    Ok((parts.status, parts.headers, body))
                })
                .await
            }
        }
    }
}

/// The URL of `path` (from `/`, maybe with a query and a fragment) on `base`, whose own
/// path is `prefix` plus `/`: what parsing `base` + `path` as one string gives, without
/// parsing the scheme and host again on every call (half a microsecond for an IP address).
fn join(base: &reqwest::Url, prefix: &str, path: &str) -> reqwest::Url {
    let (rest, fragment) = match path.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (path, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut url = base.clone();
    if prefix.is_empty() {
        url.set_path(path);
    } else {
        url.set_path(&format!("{prefix}{path}"));
    }
    url.set_query(query);
    url.set_fragment(fragment);
    url
}

/// The header carrying the caller's remaining time budget, in milliseconds, so the
/// server side can stop work nobody waits for ([`deadline_from_headers`] reads it).
pub const DEADLINE_HEADER: &str = "a4co-deadline-ms";

/// The longest `Retry-After` the client waits for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The header that makes a non-idempotent request safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The deadline a caller sent in [`DEADLINE_HEADER`], as an instant on this machine.
/// `None` when absent or unreadable.
pub fn deadline_from_headers(headers: &header::HeaderMap) -> Option<Instant> {
    let ms: u64 = headers
        .get(DEADLINE_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Instant::now() + Duration::from_millis(ms))
}

/// Builds a [`Client`]; [`ClientBuilder::build`] rejects settings that cannot work.
#[must_use]
pub struct ClientBuilder {
    target: String,
    base_url: String,
    timeout: Option<Duration>,
    attempt_timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: retry::Config,
    max_in_flight: Option<usize>,
    user_agent: Option<String>,
    reqwest: Option<reqwest::Client>,
    breaker: Option<breaker::Config>,
    counts: Classifier,
    issuer: Option<crate::auth::Issuer>,
    source: Option<String>,
    #[cfg(feature = "in-process")]
    in_process: Option<ServiceFn>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("target", &self.target)
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retry", &self.retry)
            .field("max_in_flight", &self.max_in_flight)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// The breaker's default classifier: a 5xx, a timeout or a failed connection.
fn default_counts(error: &Error) -> bool {
    error.status().is_some_and(|s| s >= 500) || error.is_timeout() || error.is_connect()
}

impl ClientBuilder {
    /// The calling service, the metrics' `source` label. Default: the service of
    /// [`ClientBuilder::service_auth`]'s issuer, else `unknown`.
    pub fn source(mut self, service: impl Into<String>) -> Self {
        self.source = Some(service.into());
        self
    }

    /// Sends this service's JWT (`Authorization: Bearer`) with every attempt.
    pub fn service_auth(mut self, issuer: crate::auth::Issuer) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// The circuit breaker's settings. Default [`breaker::Config::default`] (5 failures in
    /// 60 s open it for 30 s); `None` switches it off.
    pub fn breaker(mut self, config: impl Into<Option<breaker::Config>>) -> Self {
        self.breaker = config.into();
        self
    }

    /// Which failed attempts count against the breaker (default: a 5xx, a timeout, a
    /// failed connection; never a 4xx, which is the target answering).
    pub fn breaker_failure_if(
        mut self,
        is_failure: impl Fn(&Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.counts = Arc::new(is_failure);
        self
    }

    /// The total time a call may take, retries and waits included. Default 5 s. `None`
    /// leaves only the per-attempt timeout and the caller's deadline.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// The time one attempt may take. Default: the total timeout.
    pub fn attempt_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.attempt_timeout = timeout.into();
        self
    }

    /// The time to establish a connection. Default 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How to retry. Default [`retry::Config::default`]; [`retry::never`] to switch off.
    pub fn retry(mut self, retry: retry::Config) -> Self {
        self.retry = retry;
        self
    }

    /// At most this many calls in flight at once (a bulkhead); more wait for a slot until
    /// their timeout or deadline, in the order they came, then fail as rejected. Default 64;
    /// `None` for no limit.
    pub fn max_in_flight(mut self, limit: impl Into<Option<usize>>) -> Self {
        self.max_in_flight = limit.into();
        self
    }

    /// Sends every attempt to `service` in this process instead of over the network: an
    /// axum `Router`, or any tower service of HTTP requests. The whole pipeline still runs
    /// (limits, timeouts, retries, breaker, JWT, spans, metrics); only the connection is
    /// skipped. For tests of a caller against the real target's routes, and to measure the
    /// pipeline's own cost. The base URL still names the target in requests' URIs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use axum::{Router, routing::get};
    ///
    /// let inventory = Router::new().route("/api/v1/inventory/{id}", get(|| async { r#"{"available":3}"# }));
    /// let client = a4co_http::Client::builder("inventory-service", "http://inventory")
    ///     .in_process(inventory)
    ///     .build()?;
    /// let stock: serde_json::Value = client.get_json("/api/v1/inventory/p-1").await?;
    /// assert_eq!(stock["available"], 3);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "in-process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "in-process")))]
    pub fn in_process<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                axum::http::Request<axum::body::Body>,
                Response = axum::http::Response<axum::body::Body>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.in_process = Some(Arc::new(move |request| {
            let mut service = service.clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                service.call(request).await.map_err(Into::into)
            })
        }));
        self
    }

    /// Sends a `User-Agent` header with every request. Default: none, since the service
    /// JWT (`serviceId`) and the trace context already name the caller, and every header
    /// is work on both sides of every request (docs/benchmarks.md has the cost).
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Sends requests through `client` instead of one the builder makes: for a team's own
    /// TLS roots, client certificate, proxy or DNS resolver. The builder's
    /// [`connect_timeout`](ClientBuilder::connect_timeout) and
    /// [`user_agent`](ClientBuilder::user_agent) then do not apply (set them on `client`).
    /// Leave reqwest's own retries off (`.retry(reqwest::retry::never())` on its builder):
    /// this client retries, and reqwest retrying underneath would send a call more times
    /// than the retry policy and budget allow. Timeouts, retries, the breaker, the limit and
    /// the service JWT work as without it.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.reqwest = Some(client);
        self
    }

    /// Checks every setting and builds the client: its connection pool, retry budget,
    /// breaker and limit, shared by its clones.
    ///
    /// # Errors
    /// A [`ConfigError`] saying what to fix: a base URL that is not
    /// `http(s)://host[:port][/prefix]` (or has a query or fragment), a zero timeout, an
    /// attempt timeout longer than the total, no attempts, a backoff whose start exceeds
    /// its cap, a negative or non-finite budget, a zero concurrency limit.
    pub fn build(self) -> Result<Client, ConfigError> {
        let t = &self.target;
        if t.trim().is_empty() {
            return Err(ConfigError::new(t, "the target service needs a name"));
        }
        let base = reqwest::Url::parse(&self.base_url).map_err(|e| {
            ConfigError::new(
                t,
                format!("base URL {:?} is not a URL ({e})", self.base_url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https")
            || base.host_str().is_none()
            || base.query().is_some()
            || base.fragment().is_some()
        {
            return Err(ConfigError::new(
                t,
                format!(
                    "base URL {:?} must be http(s)://host[:port][/prefix], without query or fragment",
                    self.base_url
                ),
            ));
        }
        let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
        if zero(self.timeout) || zero(self.attempt_timeout) || self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                t,
                "timeouts must be above zero (use None for none)",
            ));
        }
        if let (Some(total), Some(attempt)) = (self.timeout, self.attempt_timeout)
            && attempt > total
        {
            return Err(ConfigError::new(
                t,
                format!("the attempt timeout ({attempt:?}) exceeds the total timeout ({total:?})"),
            ));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(ConfigError::new(
                t,
                "retry.max_attempts must be at least 1 (1 = no retry)",
            ));
        }
        if let Some(problem) = r.backoff.problem() {
            return Err(ConfigError::new(t, format!("retry.backoff: {problem}")));
        }
        let b = &r.budget;
        if !(b.ratio.is_finite()
            && b.ratio >= 0.0
            && b.min_per_second.is_finite()
            && b.min_per_second >= 0.0)
        {
            return Err(ConfigError::new(
                t,
                "retry.budget.ratio and min_per_second must be finite and >= 0",
            ));
        }
        if let Some(b) = &self.breaker
            && (b.failure_threshold == 0 || b.window.is_zero() || b.open_for.is_zero())
        {
            return Err(ConfigError::new(
                t,
                "breaker.failure_threshold, window and open_for must be above zero (None for no breaker)",
            ));
        }
        if self.max_in_flight == Some(0) {
            return Err(ConfigError::new(
                t,
                "max_in_flight must be at least 1 (None for no limit)",
            ));
        }
        #[cfg(feature = "in-process")]
        let exchange = match self.in_process.clone() {
            Some(service) => Exchange::InProcess(service),
            None => Exchange::Http(self.reqwest_client()?),
        };
        #[cfg(not(feature = "in-process"))]
        let exchange = Exchange::Http(self.reqwest_client()?);
        let prefix = base.path().trim_end_matches('/').to_owned();
        let breaker = self.breaker.map(Breaker::new);
        let source = self
            .source
            .or_else(|| self.issuer.as_ref().map(|i| i.service_id().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        let metrics = Metrics::new(&source, &self.target, breaker.as_ref());
        Ok(Client {
            inner: Arc::new(Inner {
                metrics,
                tokens: Tokens::new(self.retry.budget.clone()),
                limit: self.max_in_flight.map(Limit::new),
                breaker,
                counts: self.counts,
                issuer: self.issuer,
                target: self.target,
                base,
                prefix,
                exchange,
                timeout: self.timeout,
                attempt_timeout: self.attempt_timeout,
                retry: self.retry,
            }),
        })
    }

    fn reqwest_client(&self) -> Result<reqwest::Client, ConfigError> {
        if let Some(client) = &self.reqwest {
            return Ok(client.clone());
        }
        let mut http = reqwest::Client::builder().connect_timeout(self.connect_timeout);
        if let Some(agent) = &self.user_agent {
            http = http.user_agent(agent);
        }
        http
            // Our own retries only. `never()` alone still has reqwest copy every request
            // (headers, URI, extensions) in case its policy wants to resend it: with no
            // resends allowed, it does not (about 1.5k instructions per request).
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()
            .map_err(|e| {
                ConfigError::new(&self.target, format!("cannot build the HTTP stack: {e}"))
            })
    }
}

/// The client of one target service. Clones share the connection pool, the retry budget,
/// the concurrency limit and the circuit breaker.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    target: String,
    /// The base URL, parsed once; calls set its path, query and fragment.
    base: reqwest::Url,
    /// The base URL's path without its trailing `/`: prepended to every call's path.
    prefix: String,
    exchange: Exchange,
    timeout: Option<Duration>,
    attempt_timeout: Option<Duration>,
    retry: retry::Config,
    tokens: Tokens,
    limit: Option<Limit>,
    breaker: Option<Breaker>,
    counts: Classifier,
    issuer: Option<crate::auth::Issuer>,
    metrics: Metrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target)
            .field("base", &self.base.as_str())
            .field("breaker", &self.breaker.as_ref().map(Breaker::state))
            .finish_non_exhaustive()
    }
}

/// Holds the half-open probe's slot; a call dropped mid-probe gives it back.
struct Probe<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.release_probe();
        }
    }
}

impl Client {
    /// A builder for calls to `target` (the service's name, for errors and metrics) at
    /// `base_url` (`http://inventory-service:8080`).
    pub fn builder(target: impl Into<String>, base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: target.into(),
            base_url: base_url.into(),
            timeout: Some(Duration::from_secs(5)),
            attempt_timeout: None,
            connect_timeout: Duration::from_secs(1),
            retry: retry::Config::default(),
            max_in_flight: Some(64),
            user_agent: None,
            reqwest: None,
            breaker: Some(breaker::Config::default()),
            counts: Arc::new(default_counts),
            issuer: None,
            source: None,
            #[cfg(feature = "in-process")]
            in_process: None,
        }
    }

    /// The circuit breaker's state (`None` without a breaker).
    pub fn breaker_state(&self) -> Option<breaker::State> {
        self.inner.breaker.as_ref().map(Breaker::state)
    }

    /// The target service's name.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// A call with any method.
    pub fn request(&self, method: Method, path: &str) -> Call {
        Call {
            client: self.clone(),
            method,
            path: Arc::from(path),
            body: None,
            idempotency_key: None,
            deadline: None,
            headers: header::HeaderMap::new(),
            error: None,
            fallback: None,
            endpoint: None,
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Call {
        self.request(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(&self, path: &str) -> Call {
        self.request(Method::POST, path)
    }

    /// `PUT path`.
    pub fn put(&self, path: &str) -> Call {
        self.request(Method::PUT, path)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Call {
        self.request(Method::DELETE, path)
    }

    /// `GET path`, the response's JSON as `T`.
    ///
    /// # Errors
    /// See [`Call::send`]; also the body not being a `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.get(path).send_json().await
    }

    /// `POST path` with `body` as JSON, the response's JSON as `T`.
    ///
    /// # Errors
    /// As [`Client::get_json`].
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.post(path).json(body).send_json().await
    }

    /// `PUT path` with `body` as JSON, the response's JSON as `T`.
    ///
    /// # Errors
    /// As [`Client::get_json`].
    pub async fn put_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.put(path).json(body).send_json().await
    }
}

/// A successful response, read whole.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status (2xx or 3xx).
    pub status: u16,
    /// The response headers as the target sent them (empty for a fallback unless it set
    /// some).
    pub headers: header::HeaderMap,
    /// The whole body, already read (the connection is back in the pool).
    pub body: bytes::Bytes,
    /// Whether the call's fallback answered instead of the target.
    pub from_fallback: bool,
}

impl Response {
    /// A 200 with `value` as its JSON body: what a fallback usually answers.
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Self {
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Response {
            status: 200,
            headers,
            body: serde_json::to_vec(value).unwrap_or_default().into(),
            from_fallback: false,
        }
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// `serde_json`'s, when the body is not a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// One call being set up: body, idempotency key, deadline, headers, fallback; then
/// [`Call::send`].
#[must_use]
pub struct Call {
    client: Client,
    method: Method,
    path: Arc<str>,
    body: Option<bytes::Bytes>,
    idempotency_key: Option<header::HeaderValue>,
    deadline: Option<Instant>,
    headers: header::HeaderMap,
    error: Option<String>,
    fallback: Option<Fallback>,
    endpoint: Option<String>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("idempotency_key", &self.idempotency_key)
            .field("deadline", &self.deadline)
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

enum Outcome {
    Done(Response),
    Retry(Error, Option<Duration>),
    Fail(Error),
}

impl Call {
    /// Sends `body` as JSON.
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                self.body = Some(bytes.into());
                self.headers.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
            }
            Err(e) => self.error = Some(format!("the body does not serialize to JSON: {e}")),
        }
        self
    }

    /// Makes the call safe to retry even when its method is not idempotent: the target
    /// must treat requests with the same key as one.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        match header::HeaderValue::try_from(key.as_str()) {
            Ok(value) if !key.is_empty() => self.idempotency_key = Some(value),
            _ => {
                self.error = Some(format!(
                    "idempotency key {key:?} cannot be sent in a header"
                ));
            }
        }
        self
    }

    /// The caller's deadline (from a saga step or an incoming request): the call never
    /// waits past it, and the target learns the time left through [`DEADLINE_HEADER`].
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Answers with `fallback` when the target is unavailable: the breaker is open, the
    /// retries are spent (connect errors, timeouts, 429/502/503/504), the concurrency limit
    /// rejected the call, or the deadline passed. A 4xx or a non-retryable 5xx is the
    /// target's answer and comes back as an error.
    pub fn fallback(
        mut self,
        fallback: impl FnOnce(&Error) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    /// The route template for metrics and spans (`/api/v1/inventory/{productId}`). Default:
    /// the path with segments holding digits replaced by `{id}`; a client derives at most
    /// 32 such labels, then labels new paths `{other}` (so ids without digits cannot fill
    /// the metrics' series cap): name the template wherever a path carries input.
    pub fn endpoint(mut self, template: impl Into<String>) -> Self {
        self.endpoint = Some(template.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            _ => self.error = Some(format!("header {name:?} cannot be sent")),
        }
        self
    }

    fn retryable(&self) -> bool {
        self.idempotency_key.is_some()
            || matches!(
                self.method,
                Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
            )
    }

    /// Sends the call through the pipeline: concurrency limit, total timeout (or the
    /// deadline, if sooner), retries under the budget, per-attempt timeout.
    ///
    /// # Errors
    /// An [`Error`]: timed out, deadline exceeded, cannot connect, a failure status (with
    /// the body the target sent), rejected by the concurrency limit, or a bad request.
    pub async fn send(mut self) -> Result<Response, Error> {
        let fallback = self.fallback.take();
        let named = self.endpoint.is_some();
        let endpoint = self
            .endpoint
            .take()
            .unwrap_or_else(|| telemetry::endpoint_of(&self.path));
        // Borrowed, not cloned: every clone of the shared handle is an atomic write that
        // the cores running calls to the same target would fight over.
        let inner = &*self.client.inner;
        // The logical call (its attempts are child spans), with the HTTP client attributes
        // of OpenTelemetry's semantic conventions.
        let span = tracing::info_span!(
            "http.call",
            otel.name = %format_args!("{} {endpoint}", self.method),
            otel.kind = "client",
            http.request.method = %self.method,
            server.address = inner.base.host_str().unwrap_or_default(),
            server.port = i64::from(inner.base.port_or_known_default().unwrap_or_default()),
            url.template = %endpoint,
            peer.service = %inner.target,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self.run(started).instrument(span.clone()).await;
        let status = telemetry::status_label(result.as_ref().map(|r| r.status));
        telemetry::record_outcome(&span, result.as_ref().map(|r| r.status), &status);
        inner
            .metrics
            .record(endpoint, named, status, started.elapsed());
        match result {
            Err(error) if error.is_unavailable() => match fallback {
                Some(fallback) => {
                    tracing::info!(error = %error, "target unavailable: answering with the fallback");
                    let mut response = fallback(&error);
                    response.from_fallback = true;
                    Ok(response)
                }
                None => Err(error),
            },
            other => other,
        }
    }

    /// The pipeline of a call that started at `started` (one clock read serves the metric,
    /// the timeouts, the budget and the first attempt).
    async fn run(&self, started: Instant) -> Result<Response, Error> {
        let inner = &*self.client.inner;
        // The error's text is only built when there is an error.
        let err = |kind| {
            Error::new(
                kind,
                &inner.target,
                &format!("{} {}", self.method, self.path),
            )
        };
        if let Some(problem) = &self.error {
            return Err(err(Kind::Request).with_detail(problem.clone()));
        }
        if !self.path.starts_with('/') {
            // Appended to the base URL, it could name another host (`http://inventory` + `x`).
            return Err(err(Kind::Request).with_detail("the path must start with `/`"));
        }
        let total_end = inner.timeout.map(|t| started + t);
        let (end, by_deadline) = match (total_end, self.deadline) {
            (Some(t), Some(d)) if d < t => (Some(d), true),
            (None, Some(d)) => (Some(d), true),
            (t, _) => (t, false),
        };
        let expired = |attempts: u32| {
            let kind = if by_deadline {
                Kind::Deadline
            } else {
                Kind::Timeout
            };
            err(kind).with_attempts(attempts)
        };

        let mut waited = false;
        let _permit = match &inner.limit {
            None => None,
            Some(limit) => match limit.try_acquire() {
                // A free slot needs no timer.
                Some(permit) => Some(permit),
                None => {
                    waited = true;
                    let acquire = limit.acquire();
                    let permit = match end {
                        Some(end) => tokio::time::timeout_at(end.into(), acquire).await.ok(),
                        None => Some(acquire.await),
                    };
                    match permit {
                        Some(p) => Some(p),
                        None => return Err(err(Kind::Rejected)),
                    }
                }
            },
        };

        if inner.retry.max_attempts > 1 {
            inner.tokens.deposit();
        }
        let retryable = self.retryable();
        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            // The first attempt starts with the call (a wait for the concurrency limit's
            // slot has its own clock read).
            let now = if attempt == 1 && !waited {
                started
            } else {
                Instant::now()
            };
            let remaining = end.map(|e| e.saturating_duration_since(now));
            if remaining.is_some_and(|r| r.is_zero()) {
                return Err(expired(attempt - 1));
            }
            let attempt_limit = match (inner.attempt_timeout, remaining) {
                (Some(a), Some(r)) => Some(a.min(r)),
                (a, r) => a.or(r),
            };
            let mut probe = None;
            if let Some(breaker) = &inner.breaker {
                match breaker.acquire() {
                    Ok(is_probe) => {
                        probe = Some(Probe {
                            breaker,
                            armed: is_probe,
                        });
                    }
                    Err(rejected) => {
                        let c = breaker.config();
                        return Err(err(Kind::CircuitOpen)
                            .with_attempts(attempt - 1)
                            .with_detail(format!(
                                "{} failures within {:?} opened it; next probe in {:?}",
                                c.failure_threshold, c.window, rejected.retry_in
                            )));
                    }
                }
            }
            let outcome = self
                .attempt(inner, attempt_limit, remaining, attempt - 1, &err)
                .await;
            if let (Some(breaker), Some(mut probe)) = (&inner.breaker, probe) {
                let failed = match &outcome {
                    Outcome::Done(_) => false,
                    Outcome::Fail(e) | Outcome::Retry(e, _) => (inner.counts)(e),
                };
                breaker.record(probe.armed, failed);
                probe.armed = false;
            }
            let (error, wait) = match outcome {
                Outcome::Done(response) => return Ok(response),
                Outcome::Fail(e) => return Err(e.with_attempts(attempt)),
                Outcome::Retry(e, wait) => (e, wait),
            };
            let error = error.with_attempts(attempt);
            // A timeout that is really the end of the whole call's time is reported as such.
            if error.is_timeout() && end.is_some_and(|e| Instant::now() >= e) {
                return Err(expired(attempt).with_detail("the last attempt ran out of time"));
            }
            if !retryable || attempt >= inner.retry.max_attempts {
                return Err(error);
            }
            // A Retry-After is honoured up to an hour: a bogus huge one must not hang the call.
            let wait = wait
                .map(|w| w.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| inner.retry.wait(attempt));
            if end.is_some_and(|e| Instant::now().checked_add(wait).is_none_or(|t| t >= e)) {
                return Err(error.with_detail(format!(
                    "no retry: the next attempt ({wait:?} from now) would start past the {}",
                    if by_deadline { "deadline" } else { "timeout" }
                )));
            }
            if !inner.tokens.withdraw() {
                return Err(error.with_detail("no retry: the retry budget is spent"));
            }
            tracing::debug!(target = %inner.target, method = %self.method, path = %self.path, attempt, ?wait, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        inner: &Inner,
        limit: Option<Duration>,
        remaining: Option<Duration>,
        resend: u32,
        err: &impl Fn(Kind) -> Error,
    ) -> Outcome {
        let mut headers = self.headers.clone();
        // Each attempt is one HTTP request: a client span of its own.
        let url = join(&inner.base, &inner.prefix, &self.path);
        let span = tracing::info_span!(
            "http.attempt",
            otel.name = %self.method,
            otel.kind = "client",
            http.request.method = %self.method,
            server.address = url.host_str().unwrap_or_default(),
            server.port = i64::from(url.port_or_known_default().unwrap_or_default()),
            url.full = %telemetry::Redacted(&url),
            http.request.resend_count = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if resend > 0 {
            span.record("http.request.resend_count", i64::from(resend));
        }
        let (parent, state) = telemetry::trace_headers(&span);
        if let Ok(parent) = header::HeaderValue::try_from(parent) {
            headers.insert("traceparent", parent);
        }
        if let Ok(state) = header::HeaderValue::try_from(state)
            && !state.is_empty()
        {
            headers.insert("tracestate", state);
        }
        if let Some(issuer) = &inner.issuer {
            match issuer.authorization() {
                Ok(value) => {
                    headers.insert(header::AUTHORIZATION, value);
                }
                Err(e) => return Outcome::Fail(err(Kind::Request).with_source(e)),
            }
        }
        if let Some(key) = &self.idempotency_key {
            headers.insert(IDEMPOTENCY_KEY_HEADER, key.clone());
        }
        if let Some(remaining) = remaining.filter(|_| self.deadline.is_some()) {
            headers.insert(
                DEADLINE_HEADER,
                header::HeaderValue::from(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        // Each attempt builds its URL from the parsed base and moves it into the request:
        // no second copy for the first (and usual only) attempt.
        let exchange = inner
            .exchange
            .send(self.method.clone(), url, headers, self.body.clone())
            .instrument(span.clone());
        let outcome = self.exchanged(exchange, limit, err).await;
        // Only a recorded span needs the outcome (the call's metrics have their own).
        if !span.is_disabled() {
            let status = match &outcome {
                Outcome::Done(response) => Ok(response.status),
                Outcome::Fail(e) | Outcome::Retry(e, _) => Err(e),
            };
            telemetry::record_outcome(&span, status, &telemetry::status_label(status));
        }
        outcome
    }

    /// What one attempt's exchange came to, within `limit`.
    async fn exchanged(
        &self,
        exchange: impl Future<Output = Result<Exchanged, ExchangeError>>,
        limit: Option<Duration>,
        err: &impl Fn(Kind) -> Error,
    ) -> Outcome {
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, exchange).await {
                Ok(r) => r,
                Err(_) => {
                    return Outcome::Retry(
                        err(Kind::Timeout).with_detail(format!("no answer within {limit:?}")),
                        None,
                    );
                }
            },
            None => exchange.await,
        };
        match result {
            Err(ExchangeError::Http(e)) if e.is_connect() => {
                Outcome::Retry(err(Kind::Connect).with_source(e), None)
            }
            Err(ExchangeError::Http(e)) if e.is_timeout() => {
                Outcome::Retry(err(Kind::Timeout).with_source(e), None)
            }
            Err(ExchangeError::Http(e)) if e.is_builder() => {
                Outcome::Fail(err(Kind::Request).with_source(e))
            }
            Err(ExchangeError::Http(e)) => {
                Outcome::Retry(err(Kind::Transport).with_source(e), None)
            }
            #[cfg(feature = "in-process")]
            Err(ExchangeError::InProcess(e)) => {
                Outcome::Retry(err(Kind::Transport).with_source(e), None)
            }
            Ok((status, headers, body)) if status.is_success() || status.is_redirection() => {
                Outcome::Done(Response {
                    status: status.as_u16(),
                    headers,
                    body,
                    from_fallback: false,
                })
            }
            Ok((status, headers, body)) => {
                let error = err(Kind::Status)
                    .with_status(status.as_u16(), String::from_utf8_lossy(&body).into_owned());
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) {
                    let wait = headers
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry::retry_after(v, SystemTime::now()));
                    Outcome::Retry(error, wait)
                } else {
                    Outcome::Fail(error)
                }
            }
        }
    }

    /// Sends, then reads the response's JSON as `T`.
    ///
    /// # Errors
    /// As [`Call::send`], or a body that is not a `T` ([`Error::is_decode`]).
    pub async fn send_json<T: DeserializeOwned>(self) -> Result<T, Error> {
        // Shared handles only: the error's text is built if decoding fails.
        let (client, method, path) = (
            self.client.clone(),
            self.method.clone(),
            Arc::clone(&self.path),
        );
        let response = self.send().await?;
        response.json().map_err(|e| {
            Error::new(Kind::Decode, client.target(), &format!("{method} {path}")).with_source(e)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn joined_urls_are_what_parsing_the_whole_string_gives() {
        let bases = [
            "http://127.0.0.1:8080",
            "http://inventory-service:8080/",
            "https://gw.example/inventory/",
            "http://h/a%20b",
            "http://user:pw@H.example:80",
        ];
        let paths = [
            "/",
            "/x",
            "/api/v1/inventory/p-1?x=1&y=2",
            "/a b/ü?q=ä c#frag ment",
            "/../x/./y//z/..",
            "//evil.example/x",
            "/x?",
            "/x#",
            "/x?a#b?c#d",
            "/%2F/%zz/%41",
            "/x\\y",
            "/\t<>\"{}|^`",
        ];
        for base in bases {
            let parsed = reqwest::Url::parse(base).unwrap();
            let prefix = parsed.path().trim_end_matches('/');
            for path in paths {
                let whole = format!("{}{path}", base.trim_end_matches('/'));
                assert_eq!(
                    super::join(&parsed, prefix, path).as_str(),
                    reqwest::Url::parse(&whole).unwrap().as_str(),
                    "{base} + {path}"
                );
            }
        }
    }
}
