//! Service-to-service JWT: issuing (cached, refreshed before expiry), checking, and (with
//! the `server` feature) an axum layer that checks the token and a per-route permission.
//!
//! Tokens are HS256 with the claims of design-v2: `serviceId`, `permissions`, `type`
//! (`"service"`), `iat`, `exp` (1 h). The shared secret is required and at least 32 bytes:
//! [`Secret::from_env`] fails at start-up otherwise; there is no fallback secret.
//!
//! ```
//! use a4co_http::auth::{Issuer, Secret, Verifier};
//!
//! let secret = Secret::new("an-example-secret-of-at-least-32-bytes!!")?;
//! let issuer = Issuer::new(secret.clone(), "order-service", ["inventory:read"]);
//! let token = issuer.token()?;
//! let claims = Verifier::new(&secret).check(Some(&format!("Bearer {token}")), "inventory:read")?;
//! assert_eq!(claims.service_id, "order-service");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! On the server, `route_layer(auth::require(&verifier, "inventory:adjust"))` guards a
//! route; the handler finds the caller's [`Claims`] in the request extensions.

#[cfg(feature = "server")]
use std::future::Future;
#[cfg(feature = "server")]
use std::pin::Pin;
use std::sync::{Arc, RwLock};
#[cfg(feature = "server")]
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "server")]
use axum::body::Body;
#[cfg(feature = "server")]
use axum::http::{Request, Response, header};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};

/// The `type` claim of a service token.
pub const TOKEN_TYPE: &str = "service";

/// The environment variable [`Secret::from_env`] reads by default.
pub const SECRET_ENV: &str = "SERVICE_JWT_SECRET";

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// A service token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// The calling service.
    pub service_id: String,
    /// What it may do (`inventory:read`, ...).
    pub permissions: Vec<String>,
    /// Always [`TOKEN_TYPE`] for service tokens.
    #[serde(rename = "type")]
    pub token_type: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Not valid before (seconds since the epoch), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// A bad auth setup, found at start-up; the message says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service JWT: {0}")]
pub struct AuthConfigError(String);

/// The shared HS256 secret. Cheap to clone; never printed.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret of at least [`MIN_SECRET_BYTES`] bytes.
    ///
    /// # Errors
    /// A shorter one, saying how long it must be.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        let bytes = secret.as_ref();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError(format!(
                "the secret is {} bytes; it must be at least {MIN_SECRET_BYTES} (generate one with `openssl rand -base64 48`)",
                bytes.len()
            )));
        }
        Ok(Secret(Arc::from(bytes)))
    }

    /// The secret from the environment variable `name` ([`SECRET_ENV`] by convention).
    ///
    /// # Errors
    /// The variable unset, empty, not UTF-8, or too short: there is no default secret.
    pub fn from_env(name: &str) -> Result<Self, AuthConfigError> {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => {
                Self::new(value).map_err(|e| AuthConfigError(format!("{name}: {}", e.0)))
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => Err(AuthConfigError(format!(
                "{name} is not set: service calls need a shared secret of at least {MIN_SECRET_BYTES} bytes, and there is no default"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(AuthConfigError(format!("{name} is not valid UTF-8")))
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Issues this service's tokens: cached, and re-issued when less than `refresh_before` of
/// their life is left. Cheap to clone (the cache is shared).
#[derive(Clone, Debug)]
pub struct Issuer {
    key: Arc<EncodingKeyDebug>,
    service_id: String,
    permissions: Vec<String>,
    ttl: Duration,
    refresh_before: Duration,
    /// `Bearer <token>` and the token's expiry (the token is derived from the value). A
    /// read-write lock: every call reads it, and readers do not wait for each other.
    cache: Arc<RwLock<Option<(HeaderValue, u64)>>>,
}

struct EncodingKeyDebug(EncodingKey);

impl std::fmt::Debug for EncodingKeyDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodingKey(..)")
    }
}

/// Issuing failed (the crypto backend refused); nothing a caller can fix at run time.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue a service token: {0}")]
pub struct IssueError(#[source] jsonwebtoken::errors::Error);

impl Issuer {
    /// Tokens for `service_id` with these permissions, valid 1 h, refreshed 5 min early.
    pub fn new(
        secret: Secret,
        service_id: impl Into<String>,
        permissions: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Issuer {
            key: Arc::new(EncodingKeyDebug(EncodingKey::from_secret(&secret.0))),
            service_id: service_id.into(),
            permissions: permissions.into_iter().map(Into::into).collect(),
            ttl: Duration::from_secs(3600),
            refresh_before: Duration::from_secs(300),
            cache: Arc::default(),
        }
    }

    /// The service the tokens speak for.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Sets the tokens' life and how early to refresh them.
    #[must_use]
    pub fn lifetime(mut self, ttl: Duration, refresh_before: Duration) -> Self {
        self.ttl = ttl;
        self.refresh_before = refresh_before.min(ttl);
        // Tokens issued under the old lifetime are not reused.
        self.cache = Arc::default();
        self
    }

    /// A valid token: the cached one, or a new one when it is close to expiry.
    ///
    /// # Errors
    /// The crypto backend refused to sign.
    pub fn token(&self) -> Result<String, IssueError> {
        let value = self.authorization()?;
        let text = value.to_str().unwrap_or_default();
        Ok(text.strip_prefix("Bearer ").unwrap_or(text).to_owned())
    }

    /// `Bearer <token>`, ready to send (cached with the token).
    ///
    /// # Errors
    /// As [`Issuer::token`].
    pub fn authorization(&self) -> Result<HeaderValue, IssueError> {
        let now = now_secs();
        let fresh = |cached: &Option<(HeaderValue, u64)>| match cached {
            Some((value, exp)) if now + self.refresh_before.as_secs() < *exp => Some(value.clone()),
            _ => None,
        };
        let cached = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(value) = fresh(&cached) {
            return Ok(value);
        }
        drop(cached);
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another caller may have refreshed it while this one waited for the lock.
        if let Some(value) = fresh(&cache) {
            return Ok(value);
        }
        let claims = Claims {
            service_id: self.service_id.clone(),
            permissions: self.permissions.clone(),
            token_type: TOKEN_TYPE.to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            nbf: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key.0)
            .map_err(IssueError)?;
        // A JWT is base64url and dots: always a valid header value.
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        *cache = Some((value.clone(), claims.exp));
        Ok(value)
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a JWT, or claims that do not parse.
    Malformed,
    /// `exp` has passed.
    Expired,
    /// `nbf` is still ahead.
    NotYetValid,
    /// The signature does not match the secret.
    BadSignature,
    /// `alg: none`: an unsigned token.
    AlgNone,
    /// Signed with another algorithm than HS256.
    WrongAlgorithm,
    /// Not a service token (`type` is not `service`).
    WrongType,
    /// A valid token without the route's permission.
    MissingPermission,
}

impl RejectionKind {
    /// The HTTP status: 401 for a missing or invalid token, 403 for a valid token that
    /// may not do this.
    pub fn status(self) -> StatusCode {
        match self {
            RejectionKind::MissingPermission | RejectionKind::WrongType => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A stable machine-readable code, the `error` of the response body.
    pub fn code(self) -> &'static str {
        match self {
            RejectionKind::Missing => "token_missing",
            RejectionKind::Malformed => "token_malformed",
            RejectionKind::Expired => "token_expired",
            RejectionKind::NotYetValid => "token_not_yet_valid",
            RejectionKind::BadSignature => "token_bad_signature",
            RejectionKind::AlgNone => "token_unsigned",
            RejectionKind::WrongAlgorithm => "token_wrong_algorithm",
            RejectionKind::WrongType => "token_wrong_type",
            RejectionKind::MissingPermission => "permission_missing",
        }
    }
}

/// A refused request: the kind and a reason for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", kind.code())]
pub struct Rejection {
    /// What was wrong.
    pub kind: RejectionKind,
    /// Said for the caller (never the secret or the token).
    pub reason: String,
}

impl Rejection {
    fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }

    /// The response: the kind's status, `WWW-Authenticate` on 401, and a JSON body
    /// `{"error": <code>, "message": <reason>}`.
    #[cfg(feature = "server")]
    #[cfg_attr(docsrs, doc(cfg(feature = "server")))]
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({"error": self.kind.code(), "message": self.reason});
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.kind.status() == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// Checks service tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into();
        Verifier {
            key: Arc::new(DecodingKey::from_secret(&secret.0)),
            validation: Arc::new(validation),
        }
    }

    /// Checks an `Authorization` header value for a valid service token carrying
    /// `permission`, and returns its claims.
    ///
    /// # Errors
    /// A [`Rejection`] saying which check failed.
    pub fn check(
        &self,
        authorization: Option<&str>,
        permission: &str,
    ) -> Result<Claims, Rejection> {
        use RejectionKind as K;
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Err(Rejection::new(
                K::Missing,
                "no Authorization header: send `Bearer <service token>`",
            ));
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(Rejection::new(
                    K::Malformed,
                    "the Authorization scheme must be Bearer",
                ));
            }
        };
        // Before the library: it would report `alg: none` as merely unparseable.
        let alg = token
            .split('.')
            .next()
            .and_then(|h| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h)
                    .ok()
            })
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
        match alg.as_deref() {
            None => {
                return Err(Rejection::new(
                    K::Malformed,
                    "not a JWT (no readable header)",
                ));
            }
            Some(a) if a.eq_ignore_ascii_case("none") => {
                return Err(Rejection::new(
                    K::AlgNone,
                    "unsigned tokens (alg: none) are refused",
                ));
            }
            Some("HS256") => {}
            Some(other) => {
                return Err(Rejection::new(
                    K::WrongAlgorithm,
                    format!("tokens must be HS256, not {other}"),
                ));
            }
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                JwtErrorKind::ExpiredSignature => {
                    Rejection::new(K::Expired, "the token has expired")
                }
                JwtErrorKind::ImmatureSignature => {
                    Rejection::new(K::NotYetValid, "the token is not valid yet (nbf)")
                }
                JwtErrorKind::InvalidSignature => {
                    Rejection::new(K::BadSignature, "the token's signature does not match")
                }
                JwtErrorKind::InvalidAlgorithm => {
                    Rejection::new(K::WrongAlgorithm, "tokens must be HS256")
                }
                _ => Rejection::new(K::Malformed, format!("unreadable token: {e}")),
            })?
            .claims;
        if claims.token_type != TOKEN_TYPE {
            return Err(Rejection::new(
                K::WrongType,
                format!("a {:?} token is not a service token", claims.token_type),
            ));
        }
        if !claims.permissions.iter().any(|p| p == permission) {
            return Err(Rejection::new(
                K::MissingPermission,
                format!("{} may not {permission}", claims.service_id),
            ));
        }
        Ok(claims)
    }
}

/// A layer that lets a request through only with a valid service token carrying
/// `permission`; the handler finds the [`Claims`] in the request extensions.
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub fn require(verifier: &Verifier, permission: impl Into<Arc<str>>) -> RequireLayer {
    RequireLayer {
        verifier: verifier.clone(),
        permission: permission.into(),
    }
}

/// See [`require`].
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
#[derive(Clone, Debug)]
pub struct RequireLayer {
    verifier: Verifier,
    permission: Arc<str>,
}

#[cfg(feature = "server")]
impl<S> tower_layer::Layer<S> for RequireLayer {
    type Service = Require<S>;

    fn layer(&self, inner: S) -> Require<S> {
        Require {
            inner,
            verifier: self.verifier.clone(),
            permission: Arc::clone(&self.permission),
        }
    }
}

/// The service [`RequireLayer`] wraps around a route.
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
#[derive(Clone, Debug)]
pub struct Require<S> {
    inner: S,
    verifier: Verifier,
    permission: Arc<str>,
}

#[cfg(feature = "server")]
impl<S> tower_service::Service<Request<Body>> for Require<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        match self.verifier.check(authorization, &self.permission) {
            Ok(claims) => {
                request.extensions_mut().insert(claims);
                Box::pin(self.inner.call(request))
            }
            Err(rejection) => {
                tracing::info!(%rejection, "service call refused");
                let response = rejection.into_response();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
