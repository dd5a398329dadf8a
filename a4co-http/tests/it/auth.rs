//! Service JWT: every rejection case against a real axum server on a loopback port.

use std::time::{SystemTime, UNIX_EPOCH};

use a4co_http::auth::{self, Claims, Issuer, Secret, Verifier};
use a4co_http::{Client, retry};
use axum::{Extension, Router, routing::post};
use base64::Engine as _;
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(permissions: &[&str]) -> Claims {
    Claims {
        service_id: "order-service".into(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        token_type: auth::TOKEN_TYPE.into(),
        iat: now(),
        exp: now() + 3600,
        nbf: None,
    }
}

fn sign(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An inventory-like server whose adjust route needs `inventory:adjust`.
async fn server() -> String {
    let verifier = Verifier::new(&Secret::new(SECRET).unwrap());
    let app = Router::new().route(
        "/api/v1/inventory/adjust",
        post(|Extension(caller): Extension<Claims>| async move { caller.service_id })
            .route_layer(auth::require(&verifier, "inventory:adjust")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn call(url: &str, authorization: Option<String>) -> (u16, String) {
    let client = Client::builder("inventory-service", url)
        .retry(retry::never())
        .breaker(None)
        .build()
        .unwrap();
    let mut call = client.post("/api/v1/inventory/adjust");
    if let Some(a) = authorization {
        call = call.header("authorization", &a);
    }
    match call.send().await {
        Ok(r) => (r.status, String::from_utf8(r.body.to_vec()).unwrap()),
        Err(e) => (e.status().unwrap(), e.body().unwrap().to_owned()),
    }
}

#[tokio::test]
async fn every_rejection_has_its_own_status_and_reason() {
    let url = server().await;
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::to_value(claims(&["inventory:adjust"])).unwrap())
    );
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("missing", None, 401, "token_missing"),
        (
            "malformed",
            bearer("not.a.jwt".into()),
            401,
            "token_malformed",
        ),
        (
            "wrong scheme",
            Some("Basic b3JkZXI6c2VjcmV0".into()),
            401,
            "token_malformed",
        ),
        (
            "expired",
            bearer(sign(
                &Claims {
                    exp: now() - 10,
                    ..claims(&["inventory:adjust"])
                },
                SECRET,
            )),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            bearer(sign(
                &Claims {
                    nbf: Some(now() + 600),
                    ..claims(&["inventory:adjust"])
                },
                SECRET,
            )),
            401,
            "token_not_yet_valid",
        ),
        (
            "bad signature",
            bearer(sign(
                &claims(&["inventory:adjust"]),
                "another-secret-that-is-32-bytes-long!!",
            )),
            401,
            "token_bad_signature",
        ),
        ("alg none", bearer(unsigned), 401, "token_unsigned"),
        (
            "wrong type",
            bearer(sign(
                &Claims {
                    token_type: "user".into(),
                    ..claims(&["inventory:adjust"])
                },
                SECRET,
            )),
            403,
            "token_wrong_type",
        ),
        (
            "missing permission",
            bearer(sign(&claims(&["inventory:read"]), SECRET)),
            403,
            "permission_missing",
        ),
    ];
    for (name, authorization, status, code) in cases {
        let (got, body) = call(&url, authorization).await;
        assert_eq!(got, status, "{name}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], code, "{name}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{name}");
    }
    // The right token passes, and the handler sees who called.
    let (status, body) = call(&url, bearer(sign(&claims(&["inventory:adjust"]), SECRET))).await;
    assert_eq!((status, body.as_str()), (200, "order-service"));
}

#[tokio::test]
async fn the_client_sends_its_issued_token() {
    let url = server().await;
    let issuer = Issuer::new(
        Secret::new(SECRET).unwrap(),
        "order-service",
        ["inventory:adjust"],
    );
    let client = Client::builder("inventory-service", &url)
        .service_auth(issuer.clone())
        .build()
        .unwrap();
    let response = client
        .post("/api/v1/inventory/adjust")
        .send()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(response.body.to_vec()).unwrap(),
        "order-service"
    );
    assert_eq!(issuer.token().unwrap(), issuer.token().unwrap(), "cached");
}

#[test]
fn issued_tokens_carry_the_design_claims_and_refresh_before_expiry() {
    let secret = Secret::new(SECRET).unwrap();
    let issuer = Issuer::new(secret.clone(), "order-service", ["inventory:read"]);
    let token = issuer.token().unwrap();
    let claims = Verifier::new(&secret)
        .check(Some(&format!("Bearer {token}")), "inventory:read")
        .unwrap();
    assert_eq!(claims.token_type, "service");
    assert_eq!(claims.exp - claims.iat, 3600);
    // Inside the refresh margin, a new token is issued each time it is asked for.
    let eager = issuer.lifetime(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(60),
    );
    let first = eager.token().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_ne!(eager.token().unwrap(), first);
}

#[test]
fn a_missing_or_short_secret_fails_at_start_up() {
    let err = Secret::new("short").unwrap_err().to_string();
    assert!(err.contains("at least 32"), "{err}");
    let err = Secret::from_env("A4CO_TEST_SURELY_UNSET_SECRET")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not set") && err.contains("no default"),
        "{err}"
    );
    assert!(
        !format!("{:?}", Secret::new(SECRET).unwrap()).contains("secret-that"),
        "never printed"
    );
}
