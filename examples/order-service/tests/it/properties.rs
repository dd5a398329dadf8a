//! Property: whatever the order, duplication and timing of the participants' replies, and
//! crashes between save and publish, every order ends in one final state, every reservation
//! and payment the saga learned of in time is consumed or given back exactly once, and no
//! command is lost or doubled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use a4co_events::catalog::inventory::{
    FailedItem, ReleaseStock, ReserveStock, StockReservationFailed, StockReserved,
};
use a4co_events::catalog::order::{
    CancelOrder, ConfirmOrder, OrderCancelled, OrderConfirmed, OrderCreated, OrderItem,
};
use a4co_events::catalog::payment::{
    PaymentFailed, PaymentSucceeded, ProcessPayment, RefundPayment,
};
use a4co_events::{AnyMessage, Envelope, Message, Money};
use a4co_saga::{Applied, State};
use a4co_testkit::saga::Scenario;
use order_service::fulfillment::{self, Fulfillment, Phase};
use proptest::prelude::*;

const SAGA: &str = "order-fulfillment/ord-p";

#[derive(Clone, Debug)]
enum Action {
    /// Deliver the pending reply at this index (modulo their number).
    Deliver(usize),
    /// Deliver again a reply delivered before (a redelivery).
    Redeliver(usize),
    /// Let this many seconds pass (timers may fire).
    Advance(u64),
    /// The next save is not followed by its publish; the runtime restarts afterwards.
    Crash,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => any::<usize>().prop_map(Action::Deliver),
        2 => any::<usize>().prop_map(Action::Redeliver),
        2 => (0_u64..400).prop_map(Action::Advance),
        1 => Just(Action::Crash),
    ]
}

/// The participants' answer to a command, as the plan says.
fn answer(
    command: &Envelope<AnyMessage>,
    in_stock: &BTreeMap<String, bool>,
    payment_ok: bool,
) -> Option<Envelope<AnyMessage>> {
    let reply = |source: &str, aggregate: &str, data: AnyMessage| {
        Some(Envelope::caused_by(command, source, aggregate, data))
    };
    let product = command.aggregate_id.clone();
    match &command.data {
        AnyMessage::ReserveStock(c) if in_stock[&product] => {
            let data = StockReserved {
                order_id: c.order_id.clone(),
                reservation_id: format!("res-{product}"),
                ..StockReserved::example()
            };
            reply("inventory-service", &product, data.into())
        }
        AnyMessage::ReserveStock(c) => {
            let data = StockReservationFailed {
                order_id: c.order_id.clone(),
                reason: "none left".to_owned(),
                failed_items: vec![FailedItem {
                    product_id: product.clone(),
                    requested_quantity: c.quantity,
                    available_quantity: 0,
                }],
            };
            reply("inventory-service", &product, data.into())
        }
        AnyMessage::ProcessPayment(c) if payment_ok => {
            let data = PaymentSucceeded {
                order_id: c.order_id.clone(),
                transaction_id: "txn-p".to_owned(),
                ..PaymentSucceeded::example()
            };
            reply("payment-service", "pay-p", data.into())
        }
        AnyMessage::ProcessPayment(c) => {
            let data = PaymentFailed {
                order_id: c.order_id.clone(),
                ..PaymentFailed::example()
            };
            reply("payment-service", "pay-p", data.into())
        }
        AnyMessage::ConfirmOrder(_) => {
            reply("order-service", &product, OrderConfirmed::example().into())
        }
        AnyMessage::CancelOrder(c) => {
            let data = OrderCancelled {
                reason: c.reason,
                ..OrderCancelled::example()
            };
            reply("order-service", &product, data.into())
        }
        _ => None,
    }
}

struct Run {
    final_state: Option<Phase>,
    sent: Vec<Envelope<AnyMessage>>,
    /// Replies the saga took while it was running (not acknowledged as finished).
    taken_in_time: Vec<Envelope<AnyMessage>>,
}

async fn run(
    products: Vec<String>,
    in_stock: Vec<bool>,
    payment_ok: bool,
    actions: Vec<Action>,
) -> Run {
    let scenario: Scenario<Fulfillment, Phase> =
        Scenario::new(fulfillment::definition(fulfillment::Settings::default()).unwrap()).await;
    let in_stock: BTreeMap<String, bool> = products.iter().cloned().zip(in_stock).collect();
    let items = products
        .iter()
        .map(|p| OrderItem {
            product_id: p.clone(),
            artisan_id: "art-1".to_owned(),
            quantity: 1,
            unit_price: Money::eur(100),
            product_name: p.clone(),
        })
        .collect();
    let created = OrderCreated {
        items,
        ..OrderCreated::example()
    };
    let mut pending = vec![Envelope::new("order-service", "ord-p", created).into_any()];
    let mut delivered: Vec<Envelope<AnyMessage>> = Vec::new();
    let mut taken_in_time = Vec::new();
    let mut crashed = false;

    let deliver = |m: Envelope<AnyMessage>| {
        let scenario = &scenario;
        async move { scenario.when(&m).await }
    };
    let step = async |action: Action,
                      pending: &mut Vec<Envelope<AnyMessage>>,
                      delivered: &mut Vec<Envelope<AnyMessage>>,
                      taken: &mut Vec<Envelope<AnyMessage>>,
                      crashed: &mut bool| {
        match action {
            Action::Deliver(i) if !pending.is_empty() => {
                let m = pending.remove(i % pending.len());
                if deliver(m.clone()).await == Applied::Changed {
                    taken.push(m.clone());
                }
                delivered.push(m);
            }
            Action::Redeliver(i) if !delivered.is_empty() => {
                let m = delivered[i % delivered.len()].clone();
                let applied = deliver(m).await;
                assert_ne!(applied, Applied::Changed, "a redelivery changed the saga");
            }
            Action::Advance(s) => {
                scenario.when_time_passes(Duration::from_secs(s)).await;
            }
            Action::Crash => {
                scenario.crash_after_next_save();
                *crashed = true;
            }
            _ => {}
        }
        if *crashed && !matches!(action, Action::Crash) {
            scenario.restart().await;
            *crashed = false;
        }
        // The participants answer every command the broker stored.
        for command in scenario.take_sent() {
            if let Some(reply) = answer(&command, &in_stock, payment_ok) {
                pending.push(reply);
            }
        }
    };
    for action in actions {
        step(
            action,
            &mut pending,
            &mut delivered,
            &mut taken_in_time,
            &mut crashed,
        )
        .await;
    }
    // Then everything still in flight arrives, and time runs on until nothing is left.
    scenario.restart().await;
    for _ in 0..200 {
        if pending.is_empty() {
            step(
                Action::Advance(3600),
                &mut pending,
                &mut delivered,
                &mut taken_in_time,
                &mut crashed,
            )
            .await;
            if pending.is_empty() {
                break;
            }
        }
        step(
            Action::Deliver(0),
            &mut pending,
            &mut delivered,
            &mut taken_in_time,
            &mut crashed,
        )
        .await;
    }
    Run {
        final_state: scenario.state(SAGA).await,
        sent: scenario.sent(),
        taken_in_time,
    }
}

fn count<M>(sent: &[Envelope<AnyMessage>]) -> Vec<Envelope<M>>
where
    M: Message + TryFrom<AnyMessage, Error = AnyMessage>,
{
    sent.iter()
        .filter_map(|m| m.clone().downcast::<M>().ok())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_interleaving_ends_exactly(
        n in 1_usize..4,
        stock in proptest::collection::vec(proptest::bool::weighted(0.8), 4),
        payment_ok in proptest::bool::weighted(0.7),
        actions in proptest::collection::vec(action(), 0..40),
    ) {
        let products: Vec<String> = (0..n).map(|i| format!("prod-{i}")).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let run = runtime.block_on(run(products.clone(), stock[..n].to_vec(), payment_ok, actions));

        // One final state.
        let state = run.final_state.expect("the saga exists");
        prop_assert!(state.is_final(), "ended in {state:?}");

        // Commands: each sent once (ids distinct), reserve once per product.
        let ids: BTreeSet<_> = run.sent.iter().map(|m| m.event_id).collect();
        prop_assert_eq!(ids.len(), run.sent.len(), "a command was doubled");
        let reserve = count::<ReserveStock>(&run.sent);
        let mut reserved_products: Vec<_> = reserve.iter().map(|r| r.aggregate_id.clone()).collect();
        reserved_products.sort();
        prop_assert_eq!(&reserved_products, &products);
        prop_assert!(count::<ProcessPayment>(&run.sent).len() <= 1);
        let confirms = count::<ConfirmOrder>(&run.sent).len();
        // Asked again while unanswered (time runs on here), at most CONFIRM_SENDS times;
        // a confirmed saga asked at least once.
        prop_assert!(confirms <= order_service::fulfillment::CONFIRM_SENDS as usize);
        prop_assert!(state != Phase::Confirmed || confirms >= 1);
        prop_assert!(count::<CancelOrder>(&run.sent).len() <= 1);

        // Reservations the saga took while running: consumed if confirmed, else released once.
        let releases = count::<ReleaseStock>(&run.sent);
        let mut released: BTreeMap<String, usize> = BTreeMap::new();
        for r in &releases {
            *released.entry(r.data.reservation_id.clone()).or_default() += 1;
        }
        prop_assert!(released.values().all(|n| *n == 1), "released twice: {released:?}");
        for taken in &run.taken_in_time {
            if let AnyMessage::StockReserved(r) = &taken.data {
                let got = released.get(&r.reservation_id).copied().unwrap_or(0);
                let want = usize::from(state == Phase::Cancelled);
                prop_assert_eq!(got, want, "reservation {} in {:?}", r.reservation_id, state);
            }
        }
        // A payment the saga took is confirmed or refunded once; none refunded otherwise.
        let refunds = count::<RefundPayment>(&run.sent).len();
        let charged = run.taken_in_time.iter().any(|m| matches!(m.data, AnyMessage::PaymentSucceeded(_)));
        prop_assert_eq!(refunds, usize::from(charged && state == Phase::Cancelled));
    }
}
