//! Credentials and certificates made by the tests: a certificate authority with server and
//! client certificates (rcgen), nkey users, and an operator with one account whose user
//! credentials files (`.creds`: a signed user JWT and its nkey seed) the server accepts in
//! operator mode. Nothing here is checked in; every run makes its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair as TlsKey, KeyUsagePurpose,
};

use super::FixtureError;

const DAY: Duration = Duration::from_secs(86_400);

fn fixture(e: impl std::fmt::Display) -> FixtureError {
    FixtureError::Io(std::io::Error::other(e.to_string()))
}

/// A certificate authority in a temporary folder, with a server certificate for
/// `127.0.0.1`/`localhost` and a client certificate, all PEM files. Removed on drop.
///
/// ```no_run
/// use a4co_testkit::nats::{NatsServer, Pki};
///
/// let pki = Pki::new().unwrap();
/// let server = NatsServer::builder().tls(&pki).verify_clients().start();
/// // clients trust pki.ca_file() and present pki.client_cert_file() / pki.client_key_file()
/// # drop(server);
/// ```
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A new CA, a server certificate and a client certificate, valid from an hour ago for
    /// a day.
    ///
    /// # Errors
    /// The folder cannot be written, or a certificate cannot be made.
    pub fn new() -> Result<Pki, FixtureError> {
        let now = SystemTime::now();
        Self::with_client_validity(now - Duration::from_secs(3600), now + DAY)
    }

    /// As [`Pki::new`], but the client certificate expired yesterday.
    ///
    /// # Errors
    /// As [`Pki::new`].
    pub fn with_expired_client() -> Result<Pki, FixtureError> {
        let now = SystemTime::now();
        Self::with_client_validity(now - 2 * DAY, now - DAY)
    }

    /// As [`Pki::new`], with a client certificate valid from `from` until `until`.
    fn with_client_validity(from: SystemTime, until: SystemTime) -> Result<Pki, FixtureError> {
        let dir = super::unique_dir("pki");
        fs::create_dir_all(&dir)?;
        let pki = Pki { dir };

        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fixture)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "a4co test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = TlsKey::generate().map_err(fixture)?;
        let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(fixture)?;
        fs::write(pki.ca_file(), ca.pem())?;

        let now = SystemTime::now();
        let leaf = |names: Vec<String>,
                    usage: ExtendedKeyUsagePurpose,
                    (from, until): (SystemTime, SystemTime),
                    (cert, key): (PathBuf, PathBuf)|
         -> Result<(), FixtureError> {
            let mut params = CertificateParams::new(names).map_err(fixture)?;
            params.extended_key_usages = vec![usage];
            params.not_before = from.into();
            params.not_after = until.into();
            let key_pair = TlsKey::generate().map_err(fixture)?;
            let issued = params.signed_by(&key_pair, &ca).map_err(fixture)?;
            fs::write(cert, issued.pem())?;
            fs::write(key, key_pair.serialize_pem())?;
            Ok(())
        };
        leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            (now - DAY, now + DAY),
            (pki.dir.join("server.pem"), pki.dir.join("server-key.pem")),
        )?;
        leaf(
            vec!["a4co-test-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            (from, until),
            (pki.client_cert_file(), pki.client_key_file()),
        )?;
        Ok(pki)
    }

    /// The CA certificate (PEM) clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The client certificate (PEM), signed by the CA.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's private key (PEM).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    pub(super) fn server_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server-key.pem"))
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A new nkey user: `(public key, seed)`. The server lists the public key; the client
/// signs with the seed.
pub fn nkey_user() -> (String, String) {
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap_or_default();
    (user.public_key(), seed)
}

/// An operator (decentralised JWT auth) with one account that has JetStream, for a server
/// in operator mode, and the user credentials it issues.
#[derive(Debug)]
pub struct Operator {
    operator: KeyPair,
    account: KeyPair,
    system: KeyPair,
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

impl Operator {
    /// A fresh operator, account and system account.
    pub fn new() -> Self {
        Operator {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
            system: KeyPair::new_account(),
        }
    }

    /// A user credentials file's text (`.creds`: the user JWT signed by the account, then
    /// the user's nkey seed), expiring at `expires` when given.
    pub fn creds(&self, name: &str, expires: Option<SystemTime>) -> String {
        let user = KeyPair::new_user();
        let mut claims = serde_json::json!({
            "jti": format!("{}-{}", name, unix(SystemTime::now())),
            "iat": unix(SystemTime::now()) - 60,
            "iss": self.account.public_key(),
            "name": name,
            "sub": user.public_key(),
            "nats": {
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            },
        });
        if let Some(expires) = expires {
            claims["exp"] = unix(expires).into();
        }
        let jwt = sign(&self.account, &claims);
        let seed = user.seed().unwrap_or_default();
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    fn account_jwt(&self, account: &KeyPair, name: &str, jetstream: bool) -> String {
        let mut limits = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        if jetstream {
            for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[key] = (-1).into();
            }
        }
        let claims = serde_json::json!({
            "jti": format!("{name}-{}", unix(SystemTime::now())),
            "iat": unix(SystemTime::now()) - 60,
            "iss": self.operator.public_key(),
            "name": name,
            "sub": account.public_key(),
            "nats": {
                "limits": limits,
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account", "version": 2,
            },
        });
        sign(&self.operator, &claims)
    }

    /// The server settings for operator mode: the operator JWT, a memory resolver preloaded
    /// with both accounts, the system account.
    pub(super) fn server_config(&self) -> String {
        let operator = sign(
            &self.operator,
            &serde_json::json!({
                "jti": format!("op-{}", unix(SystemTime::now())),
                "iat": unix(SystemTime::now()) - 60,
                "iss": self.operator.public_key(),
                "name": "a4co-test-operator",
                "sub": self.operator.public_key(),
                "nats": {"type": "operator", "version": 2},
            }),
        );
        format!(
            "operator: {operator}\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {account}: {account_jwt}\n  {system}: {system_jwt}\n}}\n",
            system = self.system.public_key(),
            account = self.account.public_key(),
            account_jwt = self.account_jwt(&self.account, "a4co", true),
            system_jwt = self.account_jwt(&self.system, "SYS", false),
        )
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A NATS JWT: `base64url(header).base64url(claims).base64url(ed25519 signature)`.
fn sign(issuer: &KeyPair, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap_or_default();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}
