//! The fulfillment saga's definition: its settings are checked, and its diagram is the one
//! in the service's README.

use std::time::Duration;

use order_service::fulfillment::{self, Settings};

#[test]
fn fulfillment_settings_are_checked() {
    let e = fulfillment::definition(Settings {
        payment_timeout: Duration::from_secs(3600),
        ..Settings::default()
    })
    .unwrap_err();
    assert!(
        e.problem
            .contains("payment_timeout must be shorter than reservation_ttl"),
        "{e}"
    );
    let e = fulfillment::definition(Settings {
        stock_timeout: Duration::ZERO,
        ..Settings::default()
    })
    .unwrap_err();
    assert!(e.problem.contains("above zero"), "{e}");
}

#[test]
fn the_fulfillment_diagram_matches_docs() {
    let diagram = fulfillment::definition(Settings::default())
        .unwrap()
        .mermaid();
    assert!(diagram.starts_with("stateDiagram-v2\n"));
    assert!(
        diagram.contains("[*] --> reserving: order.created"),
        "{diagram}"
    );
    assert!(
        diagram.contains("paying --> awaiting_late_payment: timeout payment"),
        "{diagram}"
    );
    assert!(diagram.contains("confirmed --> [*]"), "{diagram}");
    let docs = include_str!("../../README.md");
    assert!(
        docs.contains(&diagram),
        "examples/order-service/README.md must hold the fulfillment diagram as the code draws it:\n{diagram}"
    );
}
