//! Connecting to a NATS that asks for credentials or TLS: each kind connects and carries a
//! message; each wrong one fails at connect naming the setting, with no secret in the
//! message; a subject the user may not publish to is a permanent error at once.

use std::time::{Duration, SystemTime};

use a4co_events::Envelope;
use a4co_events::Message as _;
use a4co_events::bus::nats::{Config, ConnectError, ConnectErrorKind, NatsBus};
use a4co_events::bus::{PublishErrorKind, Publisher};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::catalog::payment::ProcessPayment;
use a4co_testkit::nats::{NatsServer, Operator, Pki, nkey_user};

const PASSWORD: &str = "pw-9f3c1d-secret";

/// Connects, provisions and publishes one event: the connection is really usable.
async fn carries_a_message(config: Config) {
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    bus.provision().await.unwrap_or_else(|e| panic!("{e}"));
    let ack = bus
        .publish(&Envelope::new(
            "order-service",
            "ord-1",
            OrderCreated::example(),
        ))
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    assert_eq!(ack.stream, "ORDERS");
}

/// The connect error, checked to be of `kind`, to name `setting`, and to hold none of
/// `secrets` (in its text or its `Debug`).
async fn refused(
    config: Config,
    kind: ConnectErrorKind,
    setting: &str,
    secrets: &[&str],
) -> ConnectError {
    let error = NatsBus::connect(config)
        .await
        .err()
        .unwrap_or_else(|| panic!("it connected; expected {kind:?} naming {setting}"));
    let (text, debug) = (error.to_string(), format!("{error:?}"));
    eprintln!("refused as expected: {text}");
    assert_eq!(error.kind(), kind, "{text}");
    assert!(text.contains(setting), "{setting} not named in: {text}");
    for secret in secrets {
        assert!(
            !text.contains(secret) && !debug.contains(secret),
            "{secret} shown in: {debug}"
        );
    }
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_passwords_and_nkeys_connect_and_wrong_ones_name_their_setting() {
    let (nkey_public, nkey_seed) = nkey_user();
    let server = NatsServer::builder()
        .user("app", PASSWORD)
        .nkey_user(&nkey_public)
        .start();
    assert!(
        !format!("{server:?}").contains(PASSWORD),
        "the fixture shows no password"
    );
    let url = server.url();

    carries_a_message(Config::new(&url).user_and_password("app", PASSWORD)).await;
    // Credentials in the URL are used (async-nats alone ignores them).
    let port = server.port();
    carries_a_message(Config::new(format!(
        "nats://app:{PASSWORD}@127.0.0.1:{port}"
    )))
    .await;
    carries_a_message(Config::new(&url).nkey_seed(&nkey_seed)).await;
    let dir = std::env::temp_dir().join(format!("a4co-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed_file = dir.join("user.nk");
    std::fs::write(&seed_file, format!("{nkey_seed}\n")).unwrap();
    carries_a_message(Config::new(&url).nkey_seed_file(&seed_file)).await;

    refused(
        Config::new(&url).user_and_password("app", "wrong-pw-77"),
        ConnectErrorKind::Unauthorized,
        "Config::user_and_password",
        &["wrong-pw-77"],
    )
    .await;
    refused(
        Config::new(format!("nats://app:wrong-pw-77@127.0.0.1:{port}")),
        ConnectErrorKind::Unauthorized,
        "nats://app:***@127.0.0.1",
        &["wrong-pw-77"],
    )
    .await;
    refused(
        Config::new(&url),
        ConnectErrorKind::Unauthorized,
        "the server requires credentials",
        &[],
    )
    .await;
    let (_, stranger) = nkey_user();
    refused(
        Config::new(&url).nkey_seed(&stranger),
        ConnectErrorKind::Unauthorized,
        "Config::nkey_seed",
        &[&stranger],
    )
    .await;
    refused(
        Config::new(&url).nkey_seed_file(dir.join("missing.nk")),
        ConnectErrorKind::InvalidConfig,
        "Config::nkey_seed_file: cannot read",
        &[],
    )
    .await;
    // Settings read from the environment are named by their variables.
    let env = Config::from_vars(|name| match name {
        "NATS_URL" => Some(url.clone()),
        "NATS_USER" => Some("app".into()),
        "NATS_PASSWORD" => Some("wrong-pw-77".into()),
        _ => None,
    })
    .unwrap()
    .unwrap();
    refused(
        env,
        ConnectErrorKind::Unauthorized,
        "NATS_USER/NATS_PASSWORD",
        &["wrong-pw-77"],
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_the_user_may_not_publish_to_is_a_permanent_error_at_once() {
    let server = NatsServer::builder()
        .user_denied("orders", PASSWORD, "payment.cmd.>")
        .start();
    let bus = NatsBus::connect(
        Config::new(server.url())
            .user_and_password("orders", PASSWORD)
            // Far longer than the test waits: a refusal must not wait for it.
            .ack_timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    bus.provision().await.unwrap();
    let started = std::time::Instant::now();
    let error = bus
        .publish(&Envelope::new(
            "order-service",
            "ord-1",
            ProcessPayment::example(),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), PublishErrorKind::PermissionDenied, "{error}");
    assert!(error.to_string().contains("payment.cmd.process"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it waited for the ack timeout"
    );
    // The connection is still good for what the user may publish.
    let ack = bus
        .publish(&Envelope::new(
            "order-service",
            "ord-1",
            OrderCreated::example(),
        ))
        .await
        .unwrap();
    assert_eq!(ack.stream, "ORDERS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_connect_and_a_wrong_one_names_its_setting() {
    let server = NatsServer::builder().token("tok-5e1f-secret").start();
    carries_a_message(Config::new(server.url()).token("tok-5e1f-secret")).await;
    let port = server.port();
    carries_a_message(Config::new(format!(
        "nats://tok-5e1f-secret@127.0.0.1:{port}"
    )))
    .await;
    refused(
        Config::new(server.url()).token("tok-wrong-secret"),
        ConnectErrorKind::Unauthorized,
        "Config::token",
        &["tok-wrong-secret"],
    )
    .await;
    let error = refused(
        Config::new(format!("nats://tok-wrong-secret@127.0.0.1:{port}")),
        ConnectErrorKind::Unauthorized,
        "nats://***@127.0.0.1",
        &["tok-wrong-secret"],
    )
    .await;
    assert!(error.to_string().contains("the URL"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_files_connect_in_operator_mode_and_expired_or_foreign_ones_do_not() {
    let operator = Operator::new();
    let server = NatsServer::builder().operator(&operator).start();
    let dir = std::env::temp_dir().join(format!("a4co-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };

    let good = write("good.creds", operator.creds("orders", None));
    carries_a_message(Config::new(server.url()).credentials_file(&good)).await;

    let expired = operator.creds(
        "orders",
        Some(SystemTime::now() - Duration::from_secs(3600)),
    );
    let seed = expired
        .lines()
        .find(|l| l.starts_with("SU"))
        .unwrap()
        .to_owned();
    let expired = write("expired.creds", expired);
    let error = refused(
        Config::new(server.url()).credentials_file(&expired),
        ConnectErrorKind::Unauthorized,
        "Config::credentials_file",
        &[&seed],
    )
    .await;
    assert!(error.to_string().contains("expired at"), "{error}");

    let foreign = write("foreign.creds", Operator::new().creds("orders", None));
    refused(
        Config::new(server.url()).credentials_file(&foreign),
        ConnectErrorKind::Unauthorized,
        "Config::credentials_file",
        &[],
    )
    .await;
    refused(
        Config::new(server.url()).credentials_file(write("empty.creds", String::new())),
        ConnectErrorKind::InvalidConfig,
        "is not a credentials file",
        &[],
    )
    .await;
    refused(
        Config::new(server.url()),
        ConnectErrorKind::Unauthorized,
        "the server requires credentials",
        &[],
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_connects_and_an_untrusted_server_names_the_ca_setting() {
    let pki = Pki::new().unwrap();
    let server = NatsServer::builder().tls(&pki).start();
    carries_a_message(Config::new(server.url()).tls_ca_file(pki.ca_file())).await;
    let other = Pki::new().unwrap();
    refused(
        Config::new(server.url()).tls_ca_file(other.ca_file()),
        ConnectErrorKind::Tls,
        "Config::tls_ca_file",
        &[],
    )
    .await;
    refused(
        Config::new(server.url()),
        ConnectErrorKind::Tls,
        "Config::tls_ca_file",
        &[],
    )
    .await;
    // Asking for TLS from a server without it says so.
    let plain = NatsServer::start();
    refused(
        Config::new(plain.url()).tls_ca_file(pki.ca_file()),
        ConnectErrorKind::Tls,
        "does not offer TLS",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_connects_with_a_client_certificate_and_names_it_when_missing_or_expired() {
    let pki = Pki::new().unwrap();
    let server = NatsServer::builder().tls(&pki).verify_clients().start();
    carries_a_message(
        Config::new(server.url())
            .tls_ca_file(pki.ca_file())
            .tls_client_certificate(pki.client_cert_file(), pki.client_key_file()),
    )
    .await;
    refused(
        Config::new(server.url()).tls_ca_file(pki.ca_file()),
        ConnectErrorKind::Tls,
        "Config::tls_client_certificate",
        &[],
    )
    .await;
    let stale = Pki::with_expired_client().unwrap();
    let server = NatsServer::builder().tls(&stale).verify_clients().start();
    refused(
        Config::new(server.url())
            .tls_ca_file(stale.ca_file())
            .tls_client_certificate(stale.client_cert_file(), stale.client_key_file()),
        ConnectErrorKind::Tls,
        "Config::tls_client_certificate",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_team_built_is_used_as_it_is() {
    let server = NatsServer::builder().user("app", PASSWORD).start();
    let client = async_nats::ConnectOptions::with_user_and_password("app".into(), PASSWORD.into())
        .connect(server.url())
        .await
        .unwrap();
    let config = Config::from_client(client);
    assert!(!format!("{config:?}").contains(PASSWORD));
    carries_a_message(config).await;
}
