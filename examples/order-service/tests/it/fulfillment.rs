//! Every path of the order fulfillment saga, in memory, step by step.

use std::time::Duration;

use a4co_events::catalog::inventory::{ReleaseStock, ReserveStock};
use a4co_events::catalog::order::{CancelOrder, CancellationReason, ConfirmOrder};
use a4co_events::catalog::payment::{ProcessPayment, RefundPayment};
use a4co_events::{AnyMessage, Envelope, Money};
use a4co_saga::{Applied, step_message_id};
use a4co_testkit::saga::{Scenario, scenario_start};
use order_service::fulfillment::{self, Fulfillment, LineStatus, Phase};

use crate::support::*;

async fn scenario() -> Scenario<Fulfillment, Phase> {
    Scenario::new(fulfillment::definition(fulfillment::Settings::default()).unwrap()).await
}

/// A scenario where both lines are reserved and the payment was asked for.
async fn paying() -> Scenario<Fulfillment, Phase> {
    let s = scenario().await;
    s.given([
        &order_created(ORDER),
        &reserved(ORDER, OIL),
        &reserved(ORDER, BOWL),
    ])
    .await;
    assert_eq!(s.state(SAGA).await, Some(Phase::Paying));
    s.take_sent();
    s
}

fn types(sent: &[Envelope<AnyMessage>]) -> Vec<&'static str> {
    sent.iter().map(Envelope::event_type).collect()
}

fn released(sent: &[Envelope<AnyMessage>]) -> Vec<String> {
    sent.iter()
        .filter_map(|m| m.clone().downcast::<ReleaseStock>().ok())
        .map(|m| m.data.reservation_id)
        .collect()
}

#[tokio::test]
async fn happy_path_reserves_every_line_charges_and_confirms() {
    let s = scenario().await;
    assert_eq!(s.when(&order_created(ORDER)).await, Applied::Changed);
    let reserve = s.take_sent_of::<ReserveStock>();
    let mut products: Vec<&str> = reserve.iter().map(|r| r.aggregate_id.as_str()).collect();
    products.sort_unstable();
    assert_eq!(products, [BOWL, OIL]);
    for r in &reserve {
        assert_eq!(r.data.order_id, ORDER);
        assert_eq!(
            r.data.expires_at,
            scenario_start() + chrono::Duration::minutes(30)
        );
        assert_eq!(
            r.event_id,
            step_message_id(SAGA, &format!("reserve/{}", r.aggregate_id))
        );
        assert_eq!(r.metadata.saga_id.as_deref(), Some(SAGA));
        assert_eq!(r.source, "order-service");
    }
    assert_eq!(s.state(SAGA).await, Some(Phase::Reserving));

    s.when(&reserved(ORDER, OIL)).await;
    assert!(
        s.take_sent().is_empty(),
        "no payment before every line is held"
    );
    s.when(&reserved(ORDER, BOWL)).await;
    let pay = s.take_sent_of::<ProcessPayment>();
    assert_eq!(pay.len(), 1);
    assert_eq!(pay[0].data.amount, Money::eur(5900));
    assert_eq!(pay[0].data.customer_id, "user-4711");
    assert_eq!(s.state(SAGA).await, Some(Phase::Paying));

    s.when(&paid(ORDER)).await;
    let confirm = s.take_sent_of::<ConfirmOrder>();
    assert_eq!(confirm.len(), 1);
    assert_eq!(confirm[0].data.payment_id, "txn-ord-1");
    s.when(&confirmed(ORDER)).await;
    assert_eq!(s.state(SAGA).await, Some(Phase::Confirmed));
    assert!(s.take_sent().is_empty());
    let instance = s.instance(SAGA).await.unwrap();
    assert!(
        instance.timers().next().is_none(),
        "a finished saga waits for nothing"
    );
    assert!(
        instance
            .data
            .lines
            .iter()
            .all(|l| matches!(l.status, LineStatus::Reserved { .. }))
    );
}

#[tokio::test]
async fn stock_unavailable_releases_what_was_reserved_and_cancels() {
    let s = scenario().await;
    s.given([&order_created(ORDER), &reserved(ORDER, OIL)])
        .await;
    s.take_sent();
    s.when(&reservation_failed(ORDER, BOWL)).await;
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        ["inventory.cmd.release_stock", "order.cmd.cancel"]
    );
    assert_eq!(released(&sent), [format!("res-{ORDER}-{OIL}")]);
    let cancel = sent[1].clone().downcast::<CancelOrder>().unwrap();
    assert_eq!(cancel.data.reason, CancellationReason::InventoryUnavailable);
    assert!(!cancel.data.refund_required);
    assert!(
        cancel
            .data
            .detail
            .unwrap()
            .contains("prod-ceramic-bowl: 2 requested, 0 available")
    );
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn a_reservation_arriving_after_a_failure_is_released_before_the_cancel() {
    let s = scenario().await;
    s.given([&order_created(ORDER)]).await;
    s.take_sent();
    s.when(&reservation_failed(ORDER, BOWL)).await;
    assert!(s.take_sent().is_empty(), "the oil line is still unanswered");
    assert_eq!(s.state(SAGA).await, Some(Phase::Releasing));
    s.when(&reserved(ORDER, OIL)).await;
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        ["inventory.cmd.release_stock", "order.cmd.cancel"]
    );
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn payment_failed_releases_every_reservation_last_first_and_cancels() {
    let s = paying().await;
    s.when(&payment_failed(ORDER)).await;
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        [
            "inventory.cmd.release_stock",
            "inventory.cmd.release_stock",
            "order.cmd.cancel"
        ]
    );
    assert_eq!(
        released(&sent),
        [format!("res-{ORDER}-{BOWL}"), format!("res-{ORDER}-{OIL}")],
        "compensations run in reverse order of completion"
    );
    let cancel = sent[2].clone().downcast::<CancelOrder>().unwrap();
    assert_eq!(cancel.data.reason, CancellationReason::PaymentFailed);
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn an_unanswered_payment_releases_cancels_and_refunds_a_late_success() {
    let s = paying().await;
    assert_eq!(s.when_time_passes(Duration::from_secs(299)).await, 0);
    assert!(s.take_sent().is_empty());
    assert_eq!(s.when_time_passes(Duration::from_secs(2)).await, 1);
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        [
            "inventory.cmd.release_stock",
            "inventory.cmd.release_stock",
            "order.cmd.cancel"
        ]
    );
    let cancel = sent[2].clone().downcast::<CancelOrder>().unwrap();
    assert_eq!(cancel.data.reason, CancellationReason::PaymentTimeout);
    assert_eq!(s.state(SAGA).await, Some(Phase::AwaitingLatePayment));
    // The timer fired once: moving on fires nothing more.
    assert_eq!(s.when_time_passes(Duration::from_secs(60)).await, 0);

    s.when(&paid(ORDER)).await;
    let refund = s.take_sent_of::<RefundPayment>();
    assert_eq!(refund.len(), 1);
    assert_eq!(refund[0].data.payment_id, "txn-ord-1");
    assert_eq!(refund[0].data.amount, Money::eur(5900));
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn without_a_late_payment_the_saga_ends_after_its_window() {
    let s = paying().await;
    s.when_time_passes(Duration::from_secs(301)).await;
    s.take_sent();
    s.when_time_passes(Duration::from_secs(3600)).await;
    assert!(s.take_sent().is_empty());
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn a_cancellation_after_payment_refunds_it_and_releases_the_stock() {
    let s = paying().await;
    s.when(&paid(ORDER)).await;
    s.take_sent();
    s.when(&cancelled_by_customer(ORDER)).await;
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        [
            "payment.cmd.refund",
            "inventory.cmd.release_stock",
            "inventory.cmd.release_stock"
        ],
        "the payment, completed last, is undone first; the order service cancelled already"
    );
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn inventory_that_never_answers_cancels_the_order() {
    let s = scenario().await;
    s.when(&order_created(ORDER)).await;
    s.take_sent();
    s.when_time_passes(Duration::from_secs(121)).await;
    let sent = s.take_sent();
    assert_eq!(types(&sent), ["order.cmd.cancel"]);
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
}

#[tokio::test]
async fn duplicates_and_strays_change_nothing() {
    let s = scenario().await;
    let created = order_created(ORDER);
    s.when(&created).await;
    let first = s.take_sent();
    assert_eq!(s.when(&created).await, Applied::Duplicate);
    // The same order published again under a new id: still one saga.
    assert_eq!(s.when(&order_created(ORDER)).await, Applied::Unexpected);
    let oil = reserved(ORDER, OIL);
    s.when(&oil).await;
    assert_eq!(s.when(&oil).await, Applied::Duplicate);
    assert!(s.take_sent().is_empty());
    assert_eq!(first.len(), 2);
    assert_eq!(s.store().len(), 1);
}

#[tokio::test]
async fn a_reply_before_its_saga_started_is_retried_and_one_after_it_finished_is_acknowledged() {
    let s = scenario().await;
    assert_eq!(s.when(&reserved(ORDER, OIL)).await, Applied::NotStarted);
    assert!(s.store().is_empty());
    s.given([
        &order_created(ORDER),
        &reservation_failed(ORDER, OIL),
        &reservation_failed(ORDER, BOWL),
    ])
    .await;
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
    assert_eq!(s.when(&confirmed(ORDER)).await, Applied::Finished);
    assert!(s.take_sent_of::<ConfirmOrder>().is_empty());
}

#[tokio::test]
async fn a_payment_success_reaching_a_cancelled_saga_at_any_age_is_refunded_once() {
    for cancelled_after in ["stock", "payment-failure", "window", "customer"] {
        let s = if cancelled_after == "stock" {
            let s = scenario().await;
            s.given([
                &order_created(ORDER),
                &reserved(ORDER, OIL),
                &reservation_failed(ORDER, BOWL),
            ])
            .await;
            s
        } else {
            paying().await
        };
        match cancelled_after {
            "payment-failure" => {
                s.when(&payment_failed(ORDER)).await;
            }
            // Past the payment timeout, then the whole late-payment window.
            "window" => {
                s.when_time_passes(Duration::from_secs(301)).await;
                s.when_time_passes(Duration::from_secs(3601)).await;
            }
            "customer" => {
                s.when(&cancelled_by_customer(ORDER)).await;
                s.when_time_passes(Duration::from_secs(3601)).await;
            }
            _ => {}
        }
        assert_eq!(
            s.state(SAGA).await,
            Some(Phase::Cancelled),
            "{cancelled_after}"
        );
        // Days later, within the store's retention of finished sagas.
        s.when_time_passes(Duration::from_secs(6 * 24 * 3600)).await;
        s.take_sent();
        let success = paid(ORDER);
        assert_eq!(
            s.when(&success).await,
            Applied::Changed,
            "{cancelled_after}"
        );
        let refund = s.take_sent_of::<RefundPayment>();
        assert_eq!(refund.len(), 1, "{cancelled_after}");
        assert_eq!(
            (refund[0].data.payment_id.as_str(), refund[0].data.amount),
            ("txn-ord-1", Money::eur(5900))
        );
        assert_eq!(
            s.state(SAGA).await,
            Some(Phase::Cancelled),
            "stays finished"
        );
        // The same payment announced again (another id), or redelivered: refunded once.
        s.when(&paid(ORDER)).await;
        assert_eq!(s.when(&success).await, Applied::Duplicate);
        assert!(s.take_sent().is_empty(), "{cancelled_after}");
    }
}

#[tokio::test]
async fn a_payment_the_saga_kept_is_not_refunded_and_a_second_one_is() {
    let s = paying().await;
    s.given([&paid(ORDER), &confirmed(ORDER)]).await;
    assert_eq!(s.state(SAGA).await, Some(Phase::Confirmed));
    s.take_sent();
    s.when(&paid(ORDER)).await;
    assert!(s.take_sent().is_empty(), "the order's own charge is kept");
    let mut second = paid(ORDER);
    if let AnyMessage::PaymentSucceeded(p) = &mut second.data {
        p.transaction_id = "txn-second".to_owned();
    }
    s.when(&second).await;
    let refund = s.take_sent_of::<RefundPayment>();
    assert_eq!(refund.len(), 1);
    assert_eq!(refund[0].data.payment_id, "txn-second");
    assert_eq!(s.state(SAGA).await, Some(Phase::Confirmed));
}

#[tokio::test]
async fn a_hold_lapsing_after_payment_refunds_and_cancels_even_a_confirmed_order() {
    for confirmed_first in [false, true] {
        let s = paying().await;
        s.when(&paid(ORDER)).await;
        if confirmed_first {
            s.when(&confirmed(ORDER)).await;
            assert_eq!(s.state(SAGA).await, Some(Phase::Confirmed));
        }
        s.take_sent();
        // Another order's lapse, or a release the saga asked for, changes nothing.
        s.when(&hold_lapsed("ord-other", OIL)).await;
        assert!(s.take_sent().is_empty());

        s.when(&hold_lapsed(ORDER, OIL)).await;
        let sent = s.take_sent();
        assert_eq!(
            types(&sent),
            [
                "payment.cmd.refund",
                "inventory.cmd.release_stock",
                "inventory.cmd.release_stock",
                "order.cmd.cancel"
            ],
            "confirmed first: {confirmed_first}"
        );
        let cancel = sent[3].clone().downcast::<CancelOrder>().unwrap();
        assert_eq!(cancel.data.reason, CancellationReason::InventoryUnavailable);
        assert!(cancel.data.refund_required);
        assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
        // The lapse announced again (a confirmation that found no hold): nothing more.
        s.when(&hold_lapsed(ORDER, OIL)).await;
        assert!(s.take_sent().is_empty());
    }
}

#[tokio::test]
async fn a_hold_lapsing_while_paying_cancels_and_the_payment_command_expires_with_the_wait() {
    let s = scenario().await;
    s.given([&order_created(ORDER), &reserved(ORDER, OIL)])
        .await;
    s.when(&reserved(ORDER, BOWL)).await;
    let pay = s.take_sent_of::<ProcessPayment>();
    assert_eq!(
        pay[0].data.expires_at,
        Some(scenario_start() + chrono::Duration::minutes(5)),
        "the command expires when the saga stops waiting"
    );
    s.take_sent();
    s.when(&hold_lapsed(ORDER, BOWL)).await;
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        [
            "inventory.cmd.release_stock",
            "inventory.cmd.release_stock",
            "order.cmd.cancel"
        ]
    );
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
    assert!(s.instance(SAGA).await.unwrap().timers().next().is_none());
    // The payment still succeeds: refunded.
    s.when(&paid(ORDER)).await;
    assert_eq!(s.take_sent_of::<RefundPayment>().len(), 1);
}

#[tokio::test]
async fn a_crash_between_save_and_publish_neither_loses_nor_doubles_a_command() {
    let s = scenario().await;
    s.given([&order_created(ORDER), &reserved(ORDER, OIL)])
        .await;
    s.take_sent();
    s.crash_after_next_save();
    let bowl = reserved(ORDER, BOWL);
    s.when(&bowl).await;
    assert!(
        s.take_sent().is_empty(),
        "the crash kept the payment command in the outbox"
    );
    let saved = s.instance(SAGA).await.unwrap();
    assert_eq!(saved.state, Phase::Paying);
    assert_eq!(saved.outbox().len(), 1);

    assert_eq!(s.restart().await, 1);
    assert_eq!(s.take_sent_of::<ProcessPayment>().len(), 1);
    assert!(s.instance(SAGA).await.unwrap().outbox().is_empty());
    // The bus redelivers the message that was being handled: nothing is sent twice.
    assert_eq!(s.when(&bowl).await, Applied::Duplicate);
    assert_eq!(s.restart().await, 0);
    assert!(s.take_sent().is_empty());
    assert_eq!(s.sent_of::<ProcessPayment>().len(), 1);
}

#[tokio::test]
async fn a_redelivery_after_a_crash_publishes_the_saved_commands_once() {
    let s = scenario().await;
    s.crash_after_next_save();
    let created = order_created(ORDER);
    s.when(&created).await;
    assert!(s.take_sent().is_empty());
    // No restart: the redelivered message finds the outbox full and empties it.
    assert_eq!(s.when(&created).await, Applied::Duplicate);
    assert_eq!(s.take_sent_of::<ReserveStock>().len(), 2);
    assert_eq!(s.when(&created).await, Applied::Duplicate);
    assert!(s.take_sent().is_empty());
}

/// Guards against: a paid saga waits in `confirming` forever when `order.cmd.confirm` is
/// dead-lettered or lost, leaving the customer charged, the order pending and the stock
/// held.
#[tokio::test]
async fn an_unconfirmed_paid_order_is_asked_again_then_refunded_released_and_cancelled() {
    let s = paying().await;
    s.when(&paid(ORDER)).await;
    assert_eq!(types(&s.take_sent()), ["order.cmd.confirm"]);
    // Nobody answers: asked again after each minute, CONFIRM_SENDS times in all.
    for _ in 1..order_service::fulfillment::CONFIRM_SENDS {
        s.when_time_passes(Duration::from_secs(61)).await;
        assert_eq!(types(&s.take_sent()), ["order.cmd.confirm"]);
        assert_eq!(s.state(SAGA).await, Some(Phase::Confirming));
    }
    s.when_time_passes(Duration::from_secs(61)).await;
    let sent = s.take_sent();
    assert_eq!(
        types(&sent),
        [
            "payment.cmd.refund",
            "inventory.cmd.release_stock",
            "inventory.cmd.release_stock",
            "order.cmd.cancel"
        ],
        "refunded, every hold released, the order cancelled"
    );
    assert_eq!(s.state(SAGA).await, Some(Phase::Cancelled));
    // A confirmation answered late changes nothing more.
    assert_eq!(s.when(&confirmed(ORDER)).await, Applied::Finished);
    assert!(s.take_sent().is_empty());
}
