//! The pipeline, policy by policy, against scripted routes.

use std::time::{Duration, Instant};

use a4co_http::{Client, ClientBuilder, DEADLINE_HEADER, IDEMPOTENCY_KEY_HEADER, retry};
use a4co_testkit::http::{FaultServer, Reply};
use serde_json::{Value, json};

fn fast_retry() -> retry::Config {
    retry::Config {
        max_attempts: 3,
        backoff: retry::Backoff::new(Duration::from_millis(10), Duration::from_millis(50))
            .without_jitter(),
        ..Default::default()
    }
}

fn client(server: &FaultServer) -> ClientBuilder {
    Client::builder("inventory-service", server.base_url()).retry(fast_retry())
}

#[tokio::test]
async fn a_retry_succeeds_after_transient_503s() {
    let server = FaultServer::start().await;
    server.script(
        "GET /stock/p-1",
        [
            Reply::status(503),
            Reply::status(503),
            Reply::json(200, r#"{"units":3}"#),
        ],
    );
    let c = client(&server).build().unwrap();
    let stock: Value = c.get_json("/stock/p-1").await.unwrap();
    assert_eq!(stock, json!({"units": 3}));
    assert_eq!(server.hits("GET /stock/p-1"), 3);
}

#[tokio::test]
async fn a_user_agent_is_sent_only_when_set() {
    let server = FaultServer::start().await;
    server.script("GET /ua", [Reply::status(200)]);
    let plain = client(&server).build().unwrap();
    plain.get("/ua").send().await.unwrap();
    let named = client(&server)
        .user_agent("order-service/1.4")
        .build()
        .unwrap();
    named.get("/ua").send().await.unwrap();
    let received = server.received("GET /ua");
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].header("user-agent"), None);
    assert_eq!(received[1].header("user-agent"), Some("order-service/1.4"));
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_the_last_status_and_body() {
    let server = FaultServer::start().await;
    server.script(
        "GET /stock/p-1",
        [Reply::json(503, r#"{"error":"warming up"}"#)],
    );
    let err = client(&server)
        .build()
        .unwrap()
        .get("/stock/p-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.body(), Some(r#"{"error":"warming up"}"#));
    assert!(err.to_string().contains("warming up"), "{err}");
    assert_eq!(server.hits("GET /stock/p-1"), 3);
}

#[tokio::test]
async fn other_4xx_and_500_are_not_retried() {
    let server = FaultServer::start().await;
    server.script(
        "GET /a",
        [Reply::json(404, r#"{"error":"no such product"}"#)],
    );
    server.script("GET /b", [Reply::status(500)]);
    server.script("GET /c", [Reply::status(409)]);
    let c = client(&server).build().unwrap();
    for (path, status) in [("/a", 404), ("/b", 500), ("/c", 409)] {
        let err = c.get(path).send().await.unwrap_err();
        assert_eq!(err.status(), Some(status), "{err}");
        assert_eq!(server.hits(&format!("GET {path}")), 1, "{path}");
    }
}

#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key() {
    let server = FaultServer::start().await;
    server.script(
        "POST /orders",
        [Reply::status(503), Reply::json(201, r#"{"id":"o-1"}"#)],
    );
    let c = client(&server).build().unwrap();
    let err = c
        .post("/orders")
        .json(&json!({"sku": "x"}))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(server.hits("POST /orders"), 1, "no key: not retried");

    server.script(
        "POST /orders",
        [Reply::status(503), Reply::json(201, r#"{"id":"o-1"}"#)],
    );
    let created: Value = c
        .post("/orders")
        .json(&json!({"sku": "x"}))
        .idempotency_key("saga-1:reserve")
        .send_json()
        .await
        .unwrap();
    assert_eq!(created["id"], "o-1");
    let received = server.received("POST /orders");
    assert_eq!(received.len(), 3);
    for r in &received[1..] {
        assert_eq!(r.header(IDEMPOTENCY_KEY_HEADER), Some("saga-1:reserve"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap(),
            json!({"sku": "x"})
        );
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = FaultServer::start().await;
    server.script(
        "GET /slow-down",
        [Reply::status(429).retry_after("1"), Reply::status(200)],
    );
    let c = client(&server).build().unwrap();
    let started = Instant::now();
    c.get("/slow-down").send().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}, not the 1 s asked for"
    );
    assert_eq!(server.hits("GET /slow-down"), 2);
}

#[tokio::test]
async fn a_retry_after_past_the_timeout_ends_the_call_at_once() {
    let server = FaultServer::start().await;
    server.script("GET /later", [Reply::status(503).retry_after("30")]);
    let c = client(&server)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c.get("/later").send().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it waited anyway"
    );
    assert_eq!(err.status(), Some(503));
    assert!(err.to_string().contains("past the timeout"), "{err}");
    assert_eq!(server.hits("GET /later"), 1);
}

#[tokio::test]
async fn an_absurd_retry_after_is_no_panic_and_no_hang() {
    let server = FaultServer::start().await;
    server.script(
        "GET /never",
        [Reply::status(503).retry_after("18446744073709551615")],
    );
    let c = client(&server)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = c.get("/never").send().await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(server.hits("GET /never"), 1);
}

#[tokio::test]
async fn a_spent_budget_stops_retries() {
    let server = FaultServer::start().await;
    server.script("GET /down", [Reply::status(503)]);
    let c = client(&server)
        .retry(retry::Config {
            budget: retry::Budget {
                ratio: 0.0,
                min_per_second: 0.2,
                window: Duration::from_secs(10),
            },
            ..fast_retry()
        })
        .breaker(None)
        .build()
        .unwrap();
    // The budget holds two retries (0.2/s over 10 s) and earns none from traffic.
    let first = c.get("/down").send().await.unwrap_err();
    assert_eq!(first.attempts(), 3, "two retries from the budget");
    for _ in 0..3 {
        let err = c.get("/down").send().await.unwrap_err();
        assert_eq!(err.attempts(), 1);
        assert!(err.to_string().contains("retry budget is spent"), "{err}");
    }
    assert_eq!(server.hits("GET /down"), 6);
}

#[tokio::test]
async fn a_hanging_route_hits_the_attempt_timeout_each_attempt() {
    let server = FaultServer::start().await;
    server.script("GET /hang", [Reply::hang()]);
    let c = client(&server)
        .attempt_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c.get("/hang").send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.attempts(), 3);
    assert_eq!(server.hits("GET /hang"), 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_total_timeout_bounds_the_whole_call() {
    let server = FaultServer::start().await;
    server.script("GET /hang", [Reply::hang()]);
    let c = client(&server)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c.get("/hang").send().await.unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_deadline_shorter_than_the_timeout_wins_and_reaches_the_server() {
    let server = FaultServer::start().await;
    server.script(
        "GET /slow",
        [Reply::status(200).after(Duration::from_secs(2))],
    );
    let c = client(&server)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c
        .get("/slow")
        .deadline(Instant::now() + Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_deadline(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let sent: u64 = server.received("GET /slow")[0]
        .header(DEADLINE_HEADER)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        sent > 0 && sent <= 300,
        "the remaining budget sent was {sent} ms"
    );
}

#[tokio::test]
async fn the_concurrency_limit_queues_then_rejects() {
    let server = FaultServer::start().await;
    server.script(
        "GET /slow",
        [Reply::status(200).after(Duration::from_millis(400))],
    );
    let c = client(&server).max_in_flight(1).build().unwrap();
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.get("/slow").send().await }
    });
    // The first call holds the only slot once the server has it.
    let waiting = Instant::now();
    while server.hits("GET /slow") == 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "the first call never arrived"
        );
        tokio::task::yield_now().await;
    }
    // Waits for the slot within its deadline: rejected, never sent.
    let err = c
        .get("/slow")
        .deadline(Instant::now() + Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_rejected(), "{err}");
    // Waits for the slot and gets it.
    c.get("/slow").send().await.unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(server.hits("GET /slow"), 2);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_retried() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::builder("nobody", format!("http://127.0.0.1:{port}"))
        .retry(fast_retry())
        .build()
        .unwrap();
    let err = c.get("/x").send().await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(err.attempts(), 3);
}

#[tokio::test]
async fn a_reset_connection_is_retried_for_idempotent_calls() {
    let server = FaultServer::start().await;
    server.script("GET /flaky", [Reply::reset(), Reply::json(200, "{}")]);
    let c = client(&server).build().unwrap();
    c.get("/flaky").send().await.unwrap();
    assert_eq!(server.hits("GET /flaky"), 2);
}

#[tokio::test]
async fn a_path_without_a_leading_slash_is_refused_before_sending() {
    let server = FaultServer::start().await;
    let err = client(&server)
        .build()
        .unwrap()
        .get("evil.example/x")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_request(), "{err}");
    assert!(err.to_string().contains("must start with `/`"), "{err}");
}

#[tokio::test]
async fn a_body_that_is_not_the_expected_json_is_a_decode_error() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Stock {
        units: u32,
    }
    let server = FaultServer::start().await;
    server.script("GET /stock", [Reply::json(200, r#"{"units":"many"}"#)]);
    let err = client(&server)
        .build()
        .unwrap()
        .get_json::<Stock>("/stock")
        .await
        .unwrap_err();
    assert!(err.is_decode(), "{err}");
}

#[test]
fn bad_config_fails_at_build_saying_what_to_fix() {
    let cases: Vec<(ClientBuilder, &str)> = vec![
        (Client::builder("inv", "not a url"), "is not a URL"),
        (
            Client::builder("inv", "ftp://host"),
            "must be http(s)://host",
        ),
        (
            Client::builder("inv", "http://host/api?v=1"),
            "without query or fragment",
        ),
        (Client::builder("", "http://h"), "needs a name"),
        (
            Client::builder("inv", "http://h").timeout(Duration::ZERO),
            "above zero",
        ),
        (
            Client::builder("inv", "http://h")
                .timeout(Duration::from_secs(1))
                .attempt_timeout(Duration::from_secs(2)),
            "exceeds the total timeout",
        ),
        (
            Client::builder("inv", "http://h").retry(retry::Config {
                max_attempts: 0,
                ..Default::default()
            }),
            "max_attempts must be at least 1",
        ),
        (
            Client::builder("inv", "http://h").retry(retry::Config {
                backoff: retry::Backoff::new(Duration::from_secs(60), Duration::from_secs(30)),
                ..Default::default()
            }),
            "the initial backoff must not exceed the maximum",
        ),
        (
            Client::builder("inv", "http://h").max_in_flight(0),
            "max_in_flight",
        ),
    ];
    for (builder, expected) in cases {
        let err = builder.build().unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should say {expected:?}");
    }
    assert!(
        Client::builder("inv", "http://h")
            .retry(retry::never())
            .build()
            .is_ok()
    );
}

fn breaker(threshold: u32, open_for: Duration) -> a4co_http::breaker::Config {
    a4co_http::breaker::Config {
        failure_threshold: threshold,
        window: Duration::from_secs(60),
        open_for,
    }
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    use a4co_http::breaker::State;
    let server = FaultServer::start().await;
    server.script("GET /x", [Reply::status(503)]);
    let c = client(&server)
        .retry(retry::never())
        .breaker(breaker(3, Duration::from_millis(300)))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/x").send().await.unwrap_err().status(), Some(503));
    }
    assert_eq!(c.breaker_state(), Some(State::Open));
    let err = c.get("/x").send().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert!(err.to_string().contains("circuit open"), "{err}");
    assert_eq!(
        server.hits("GET /x"),
        3,
        "nothing reaches the target while open"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(c.breaker_state(), Some(State::HalfOpen));
    server.script("GET /x", [Reply::status(200)]);
    c.get("/x").send().await.unwrap();
    assert_eq!(c.breaker_state(), Some(State::Closed));
    assert_eq!(server.hits("GET /x"), 4);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    use a4co_http::breaker::State;
    let server = FaultServer::start().await;
    server.script("GET /x", [Reply::status(500)]);
    let c = client(&server)
        .retry(retry::never())
        .breaker(breaker(1, Duration::from_millis(100)))
        .build()
        .unwrap();
    let _ = c.get("/x").send().await;
    assert_eq!(c.breaker_state(), Some(State::Open));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        c.get("/x").send().await.unwrap_err().status(),
        Some(500),
        "the probe went through"
    );
    assert_eq!(c.breaker_state(), Some(State::Open));
    assert!(c.get("/x").send().await.unwrap_err().is_circuit_open());
    assert_eq!(server.hits("GET /x"), 2);
}

#[tokio::test]
async fn answers_from_the_target_do_not_trip_the_breaker_unless_told() {
    use a4co_http::breaker::State;
    let server = FaultServer::start().await;
    server.script("GET /missing", [Reply::status(404)]);
    server.script("GET /busy", [Reply::status(429)]);
    let c = client(&server)
        .retry(retry::never())
        .breaker(breaker(2, Duration::from_secs(30)))
        .build()
        .unwrap();
    for _ in 0..3 {
        let _ = c.get("/missing").send().await;
        let _ = c.get("/busy").send().await;
    }
    assert_eq!(
        c.breaker_state(),
        Some(State::Closed),
        "404 and 429 do not count by default"
    );

    let strict = client(&server)
        .retry(retry::never())
        .breaker(breaker(2, Duration::from_secs(30)))
        .breaker_failure_if(|e| e.status() == Some(429))
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = strict.get("/busy").send().await;
    }
    assert_eq!(strict.breaker_state(), Some(State::Open));
}

#[tokio::test]
async fn retries_stop_when_the_breaker_opens_mid_call() {
    let server = FaultServer::start().await;
    server.script("GET /x", [Reply::status(503)]);
    let c = client(&server)
        .retry(retry::Config {
            max_attempts: 5,
            ..fast_retry()
        })
        .breaker(breaker(2, Duration::from_secs(30)))
        .build()
        .unwrap();
    let err = c.get("/x").send().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(err.attempts(), 2);
    assert_eq!(server.hits("GET /x"), 2);
}

#[tokio::test]
async fn a_fallback_answers_when_the_target_is_unavailable_not_when_it_answers() {
    let server = FaultServer::start().await;
    server.script("GET /stock", [Reply::status(503)]);
    server.script(
        "GET /missing",
        [Reply::json(404, r#"{"error":"no such product"}"#)],
    );
    let c = client(&server)
        .breaker(breaker(3, Duration::from_secs(30)))
        .build()
        .unwrap();
    let fallback = || {
        |e: &a4co_http::Error| {
            a4co_http::Response::from_json(&json!({"units": 0, "why": e.to_string()}))
        }
    };
    // A 404 is the target's answer: an error, not the fallback (and not a breaker failure).
    let err = c
        .get("/missing")
        .fallback(fallback())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.body(), Some(r#"{"error":"no such product"}"#));
    // Retries spent: the fallback answers.
    let r = c.get("/stock").fallback(fallback()).send().await.unwrap();
    assert!(r.from_fallback);
    assert_eq!(r.json::<Value>().unwrap()["units"], 0);
    assert_eq!(server.hits("GET /stock"), 3);
    // Breaker open: the fallback answers at once, nothing is sent.
    let r = c.get("/stock").fallback(fallback()).send().await.unwrap();
    assert!(r.from_fallback);
    assert!(
        r.json::<Value>().unwrap()["why"]
            .as_str()
            .unwrap()
            .contains("circuit open")
    );
    assert_eq!(server.hits("GET /stock"), 3);
}

#[tokio::test]
async fn a_reqwest_client_of_the_team_carries_the_calls_with_retries_on_top() {
    let server = FaultServer::start().await;
    server.script(
        "GET /own",
        [Reply::status(503), Reply::json(200, r#"{"ok":true}"#)],
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-team",
        reqwest::header::HeaderValue::from_static("payments"),
    );
    let own = reqwest::Client::builder()
        .default_headers(headers)
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let c = client(&server).http_client(own).build().unwrap();
    let answer: Value = c.get_json("/own").await.unwrap();
    assert_eq!(answer, json!({"ok": true}));
    let received = server.received("GET /own");
    assert_eq!(
        received.len(),
        2,
        "our retry went through the team's client"
    );
    assert!(
        received
            .iter()
            .all(|r| r.header("x-team") == Some("payments"))
    );
}
