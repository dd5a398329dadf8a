//! Definitions that evolve, over a real nats-server: a new version deployed while
//! instances of the old one are under way (each finishes on its own version), a version
//! the runtime does not have (refused, saying what to do), a migration; the replay check
//! that tells which changes need a new version.

use std::time::Duration;

use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::bus::{Publisher as _, Subscription};
use a4co_events::catalog::order::{
    CancelOrder, CancellationReason, OrderCancelled, OrderConfirmed, OrderCreated,
};
use a4co_events::{Envelope, Message};
use a4co_saga::nats::KvStore;
use a4co_saga::{
    Definition, DefinitionErrorKind, Runtime, RuntimeBuilder, RuntimeError, State, VirtualClock,
};
use a4co_testkit::bus::Collector;
use a4co_testkit::nats::NatsServer;
use a4co_testkit::saga::{History, Scenario, replay, scenario_start};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
#[serde(rename_all = "kebab-case")]
enum Watch {
    Waiting,
    /// Only version 2 goes through here: confirmed, then a minute to cancel.
    Grace,
    #[state(final)]
    Done,
}

const GIVE_UP: Duration = Duration::from_secs(60);

/// Version 1 waits for the confirmation (done) or gives up after a minute (a cancel saying
/// `v1`). Version 2 changes a transition: a confirmation leads to `grace`, which a second
/// minute ends with a cancel saying `v2`.
fn watch(version: u32) -> Definition<(), Watch> {
    watch_builder(version).build().unwrap()
}

fn watch_builder(version: u32) -> a4co_saga::Builder<(), Watch> {
    let cancel = move |step: &mut a4co_saga::Step<()>| {
        let order = step.correlation_id().to_owned();
        let cancel = CancelOrder {
            reason: CancellationReason::PaymentTimeout,
            refund_required: false,
            detail: Some(format!("v{version}")),
        };
        step.send("cancel", order, cancel);
    };
    let builder = Definition::<(), Watch>::builder("watch", "order-service")
        .version(version)
        .starts_with::<OrderCreated>()
        .to(Watch::Waiting, |step, _| {
            step.schedule("give-up", GIVE_UP);
        })
        .on_timeout(Watch::Waiting, "give-up")
        .to(Watch::Done, cancel);
    if version == 1 {
        builder
            .on::<OrderConfirmed>(Watch::Waiting)
            .to(Watch::Done, |_, _| {})
    } else {
        builder
            .on::<OrderConfirmed>(Watch::Waiting)
            .to(Watch::Grace, |step, _| {
                step.cancel("give-up");
                step.schedule("grace", GIVE_UP);
            })
            .on_timeout(Watch::Grace, "grace")
            .to(Watch::Done, cancel)
    }
}

async fn connect(url: &str) -> NatsBus {
    let bus = NatsBus::connect(Config::new(url).ack_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    bus.provision().await.unwrap();
    bus
}

fn created(order: &str) -> Envelope<a4co_events::AnyMessage> {
    Envelope::new("order-service", order, OrderCreated::example()).into_any()
}

fn confirmed(order: &str) -> Envelope<a4co_events::AnyMessage> {
    Envelope::new("order-service", order, OrderConfirmed::example()).into_any()
}

type Watcher = Runtime<(), Watch, NatsBus, KvStore>;

async fn runtime(bus: &NatsBus, clock: &VirtualClock, version: u32) -> Watcher {
    builder(bus, clock, version).await.build().unwrap()
}

async fn builder(
    bus: &NatsBus,
    clock: &VirtualClock,
    version: u32,
) -> RuntimeBuilder<(), Watch, NatsBus, KvStore> {
    let store = KvStore::open(bus.transport()).await.unwrap();
    Runtime::builder(watch(version), bus.clone(), store)
        .clock(clock.clone())
        .tick(Duration::from_millis(20))
}

/// The order and the `detail` of every cancel collected.
fn cancels(collected: &Collector) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = collected
        .messages()
        .into_iter()
        .filter_map(|m| m.downcast::<CancelOrder>().ok())
        .map(|m| (m.aggregate_id, m.data.detail.unwrap_or_default()))
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_deployed_mid_flight_leaves_each_instance_on_its_own_version() {
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let clock = VirtualClock::at(scenario_start());
    let collected = Collector::start(
        &bus,
        Subscription::new("test", "cancels").to::<CancelOrder>(),
    )
    .await;

    // Version 1 runs; two orders are under way when it is replaced.
    let v1 = runtime(&bus, &clock, 1).await;
    let running = v1.start().await.unwrap();
    for order in ["ord-old-1", "ord-old-2"] {
        bus.publish(&created(order)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for order in ["ord-old-1", "ord-old-2"] {
        while v1
            .instance(&format!("watch/{order}"))
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{order} never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    running.shutdown().await;

    // Version 2 is deployed, keeping version 1 for the instances that started on it.
    let v2 = builder(&bus, &clock, 2)
        .await
        .keep_running(watch(1))
        .build()
        .unwrap();
    assert_eq!(v2.versions(), [1, 2]);
    let running = v2.start().await.unwrap();
    bus.publish(&created("ord-new")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while v2.instance("watch/ord-new").await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "ord-new never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each is confirmed; v1 finishes at once, v2 waits its grace minute and cancels.
    for order in ["ord-old-1", "ord-new"] {
        bus.publish(&confirmed(order)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let old = v2
            .instance("watch/ord-old-1")
            .await
            .unwrap()
            .map(|i| i.state);
        let new = v2.instance("watch/ord-new").await.unwrap().map(|i| i.state);
        if (old, new) == (Some(Watch::Done), Some(Watch::Grace)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{old:?} {new:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two minutes on: ord-old-2 gives up on v1, ord-new's grace ends on v2.
    clock.advance(GIVE_UP * 2 + Duration::from_secs(1));
    let sent = collected.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(sent.len(), 2, "{:?}", cancels(&collected));
    assert_eq!(
        cancels(&collected),
        [
            ("ord-new".to_owned(), "v2".to_owned()),
            ("ord-old-2".to_owned(), "v1".to_owned())
        ]
    );
    for (order, version) in [("ord-old-1", 1), ("ord-old-2", 1), ("ord-new", 2)] {
        let instance = v2
            .instance(&format!("watch/{order}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (instance.state, instance.version()),
            (Watch::Done, version),
            "{order}"
        );
    }
    running.shutdown().await;
    collected.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_runtime_does_not_have_is_refused_and_a_migration_moves_it() {
    let server = NatsServer::start();
    let bus = connect(&server.url()).await;
    let clock = VirtualClock::at(scenario_start());
    let v1 = runtime(&bus, &clock, 1).await;
    v1.handle(&created("ord-1")).await.unwrap();

    // Version 2 alone does not know how to run it: refused, saying what to do.
    let v2 = runtime(&bus, &clock, 2).await;
    let refused = v2.handle(&confirmed("ord-1")).await.unwrap_err();
    assert!(
        matches!(refused, RuntimeError::UnknownVersion { version: 1, ref known, .. } if known == &[2]),
        "{refused}"
    );
    assert!(refused.to_string().contains("keep_running"), "{refused}");
    assert_eq!(
        v2.instance("watch/ord-1")
            .await
            .unwrap()
            .map(|i| (i.state, i.version())),
        Some((Watch::Waiting, 1)),
        "untouched"
    );
    // Nor are its timers fired by it (they fire once a runtime that has it runs).
    clock.advance(GIVE_UP + Duration::from_secs(1));
    assert_eq!(v2.fire_due_timers().await.unwrap(), 0);
    assert_eq!(
        v2.instance("watch/ord-1").await.unwrap().map(|i| i.state),
        Some(Watch::Waiting)
    );

    // With a migration, it continues on version 2 from the state the team chose.
    let v2 = builder(&bus, &clock, 2)
        .await
        .migrate(1, |state, data| (state, data))
        .build()
        .unwrap();
    v2.handle(&confirmed("ord-1")).await.unwrap();
    let moved = v2.instance("watch/ord-1").await.unwrap().unwrap();
    assert_eq!((moved.state, moved.version()), (Watch::Grace, 2));
    // Only an older version of the same saga can be kept beside the current one.
    for (current, older) in [(2, watch(2)), (1, watch(2))] {
        let refused = builder(&bus, &clock, current)
            .await
            .keep_running(older)
            .build()
            .unwrap_err();
        assert_eq!(refused.kind(), DefinitionErrorKind::Version, "{refused}");
    }
}

#[tokio::test]
async fn the_replay_check_flags_a_changed_transition_and_passes_an_additive_one() {
    // Histories recorded on version 1: a confirmed order, and one given up on.
    let scenario = Scenario::new(watch(1)).await;
    scenario
        .given([&created("ord-1"), &confirmed("ord-1"), &created("ord-2")])
        .await;
    scenario
        .when_time_passes(GIVE_UP + Duration::from_secs(1))
        .await;
    let recorded = scenario.histories();
    assert_eq!(recorded.len(), 2);
    // They are data: kept as JSON beside the tests, read back for the check.
    let json = serde_json::to_string(&recorded).unwrap();
    let histories: Vec<History> = serde_json::from_str(&json).unwrap();
    assert_eq!(histories, recorded);

    let same = replay(&watch(1), &histories).await;
    assert!(same.is_clean(), "{same}");
    assert_eq!(same.checked, 2);

    // A reaction to a message the histories never had: nothing they did changes.
    let additive = watch_builder(1)
        .on::<OrderCancelled>(Watch::Waiting)
        .to(Watch::Done, |_, _| {})
        .build()
        .unwrap();
    let report = replay(&additive, &histories).await;
    assert!(report.is_clean(), "{report}");

    // Version 2 changes what a confirmation does: ord-1 would take another path at its
    // second step; ord-2, which was never confirmed, would not.
    let report = replay(&watch(2), &histories).await;
    assert_eq!(report.diverged.len(), 1, "{report}");
    let divergence = &report.diverged[0];
    assert_eq!(
        (
            divergence.saga_id.as_str(),
            divergence.step,
            divergence.input.as_str()
        ),
        ("watch/ord-1", 1, "order.confirmed")
    );
    assert_eq!(divergence.recorded.0.as_deref(), Some("done"));
    assert_eq!(divergence.replayed.0.as_deref(), Some("grace"));
    assert!(
        report
            .to_string()
            .starts_with("1 of 2 histories take another path"),
        "{report}"
    );

    // A shorter timer shows too: ord-2 would give up before its recorded step.
    let hasty = Definition::<(), Watch>::builder("watch", "order-service")
        .starts_with::<OrderCreated>()
        .to(Watch::Waiting, |step, _| {
            step.schedule("give-up", Duration::from_secs(1));
        })
        .on::<OrderConfirmed>(Watch::Waiting)
        .to(Watch::Done, |_, _| {})
        .on_timeout(Watch::Waiting, "give-up")
        .to(Watch::Done, |_| {})
        .build()
        .unwrap();
    let report = replay(&hasty, &histories).await;
    assert!(!report.is_clean());
}
