//! A step's idempotency key and deadline reach the HTTP calls it makes.

use std::time::Duration;

use a4co_events::catalog::order::{CancelOrder, CancellationReason, OrderConfirmed};
use a4co_http::Client;
use a4co_saga::{Applied, Definition, State};
use a4co_testkit::http::{FaultServer, Reply};
use a4co_testkit::saga::Scenario;

use crate::support::{ORDER, confirmed, order_created};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
#[serde(rename_all = "lowercase")]
enum Check {
    Waiting,
    #[state(final)]
    Valid,
    #[state(final)]
    Refused,
}

fn definition(payment: Client) -> Definition<u32, Check> {
    Definition::<u32, Check>::builder("payment-check", "order-service")
        .starts_with::<a4co_events::catalog::order::OrderCreated>()
        .to(Check::Waiting, |step, _| {
            step.schedule("check", Duration::from_secs(10));
        })
        .on::<OrderConfirmed>(Check::Waiting)
        .choose_async([Check::Valid, Check::Refused], move |mut step, _| {
            let payment = payment.clone();
            async move {
                let call = step.http(payment.post("/api/v1/payments/validate"), "validate");
                step.data += 1;
                match call.send().await {
                    Ok(_) => (step, Check::Valid),
                    Err(e) => {
                        let order = step.correlation_id().to_owned();
                        let cancel = CancelOrder {
                            reason: CancellationReason::PaymentFailed,
                            refund_required: false,
                            detail: Some(e.to_string()),
                        };
                        step.send("cancel", order, cancel);
                        (step, Check::Refused)
                    }
                }
            }
        })
        .on_timeout(Check::Waiting, "check")
        .to(Check::Refused, |_| {})
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_key_and_the_time_left_reach_the_target() {
    let server = FaultServer::start().await;
    let route = "POST /api/v1/payments/validate";
    server.script(route, [Reply::status(503), Reply::json(200, "{}")]);
    // A total timeout above the step's deadline: the deadline wins.
    let client = Client::builder("payment-service", server.base_url())
        .timeout(Duration::from_secs(30))
        .retry(a4co_http::retry::Config {
            backoff: a4co_http::retry::Backoff::new(
                Duration::from_millis(5),
                Duration::from_secs(30),
            )
            .without_jitter(),
            ..Default::default()
        })
        .build()
        .unwrap();
    let s = Scenario::new(definition(client)).await;
    s.when(&order_created(ORDER)).await;
    s.clock().advance(Duration::from_secs(4));
    assert_eq!(s.when(&confirmed(ORDER)).await, Applied::Changed);
    let saga = format!("payment-check/{ORDER}");
    assert_eq!(s.state(&saga).await, Some(Check::Valid));
    assert_eq!(
        s.instance(&saga).await.unwrap().data,
        1,
        "the async reaction's data is saved"
    );

    let received = server.received(route);
    assert_eq!(received.len(), 2, "a 503, then the retry with the same key");
    for r in &received {
        assert_eq!(
            r.header("idempotency-key"),
            Some(format!("{saga}/validate").as_str())
        );
        let left: u64 = r.header("a4co-deadline-ms").unwrap().parse().unwrap();
        assert!(
            left <= 6_000 && left > 5_000,
            "6 s of the 10 s timer were left, got {left} ms"
        );
    }
}

#[tokio::test]
async fn a_call_that_fails_is_the_reaction_s_to_handle() {
    let server = FaultServer::start().await;
    server.script(
        "POST /api/v1/payments/validate",
        [Reply::json(422, r#"{"error":"expired card"}"#)],
    );
    let client = Client::builder("payment-service", server.base_url())
        .build()
        .unwrap();
    let s = Scenario::new(definition(client)).await;
    s.given([&order_created(ORDER), &confirmed(ORDER)]).await;
    let cancel = s.take_sent_of::<CancelOrder>();
    assert_eq!(cancel.len(), 1);
    assert!(
        cancel[0]
            .data
            .detail
            .as_deref()
            .unwrap()
            .contains("expired card")
    );
}
