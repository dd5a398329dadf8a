//! The replay check of the fulfillment saga. `tests/histories/order-fulfillment.json`
//! holds histories recorded on the version in production, one per path; on the definition
//! in this tree they must take the same path. A change that moves them otherwise needs a
//! new version (`fulfillment::VERSION`, with the old definition kept running or a
//! migration). Once that version is deployed, record them again:
//! `A4CO_RECORD_HISTORIES=1 cargo nextest run -p example-order-service histories`.

use std::time::Duration;

use a4co_testkit::saga::{History, Scenario, replay};
use order_service::fulfillment::{self, Settings};

use crate::support::*;

const RECORDED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/histories/order-fulfillment.json"
);

/// One order down each path of the saga, in one scenario.
async fn record(settings: Settings) -> Vec<History> {
    let s = Scenario::new(fulfillment::definition(settings).unwrap()).await;
    let both = |order: &str| {
        [
            order_created(order),
            reserved(order, OIL),
            reserved(order, BOWL),
        ]
    };
    s.given(&both("ord-happy")).await;
    s.given([&paid("ord-happy"), &confirmed("ord-happy")]).await;
    s.given([
        &order_created("ord-no-stock"),
        &reserved("ord-no-stock", OIL),
        &reservation_failed("ord-no-stock", BOWL),
    ])
    .await;
    s.given(&both("ord-declined")).await;
    s.when(&payment_failed("ord-declined")).await;
    s.given(&both("ord-customer")).await;
    s.given([
        &paid("ord-customer"),
        &cancelled_by_customer("ord-customer"),
    ])
    .await;
    s.given(&both("ord-lapsed")).await;
    s.given([&paid("ord-lapsed"), &hold_lapsed("ord-lapsed", OIL)])
        .await;
    s.given(&both("ord-slow")).await;
    s.when_time_passes(Duration::from_secs(301)).await;
    s.when(&paid("ord-slow")).await;
    s.histories()
}

#[tokio::test]
async fn recorded_histories_take_the_same_path_on_this_definition() {
    if std::env::var_os("A4CO_RECORD_HISTORIES").is_some() {
        let histories = record(Settings::default()).await;
        let json = serde_json::to_string_pretty(&histories).unwrap();
        std::fs::write(RECORDED, json + "\n").unwrap();
        return;
    }
    let json = std::fs::read_to_string(RECORDED).unwrap_or_else(|e| {
        panic!("no recorded histories at {RECORDED} ({e}): record them with A4CO_RECORD_HISTORIES=1 cargo nextest run -p example-order-service histories")
    });
    let histories: Vec<History> = serde_json::from_str(&json).unwrap();
    assert_eq!(histories.len(), 6, "one per path");
    let report = replay(
        &fulfillment::definition(Settings::default()).unwrap(),
        &histories,
    )
    .await;
    assert!(
        report.is_clean(),
        "{report}\nInstances under way would take another path: give the definition a new version (fulfillment::VERSION) and keep the old one running (RuntimeBuilder::keep_running) or migrate them (RuntimeBuilder::migrate)."
    );
}

#[tokio::test]
async fn a_longer_payment_timeout_is_flagged_and_a_longer_late_window_is_not() {
    let histories = record(Settings::default()).await;
    let report = replay(
        &fulfillment::definition(Settings {
            payment_timeout: Duration::from_secs(600),
            ..Settings::default()
        })
        .unwrap(),
        &histories,
    )
    .await;
    let flagged: Vec<&str> = report.diverged.iter().map(|d| d.saga_id.as_str()).collect();
    assert_eq!(flagged, ["order-fulfillment/ord-slow"], "{report}");
    // The late-payment window only decides when a finished saga stops waiting: no
    // recorded path reached its end.
    let report = replay(
        &fulfillment::definition(Settings {
            late_payment_window: Duration::from_secs(7200),
            ..Settings::default()
        })
        .unwrap(),
        &histories,
    )
    .await;
    assert!(report.is_clean(), "{report}");
}
