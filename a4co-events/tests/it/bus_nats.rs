//! What only the JetStream transport has: a real server to kill, clusters, connection errors.

use std::collections::HashSet;
use std::time::Duration;

use a4co_events::bus::nats::{BucketSpec, Config, ConnectErrorKind, NatsBus};
use a4co_events::bus::transport::{StreamSpec, Transport};
use a4co_events::bus::{DeliveryInfo, HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::{AnyMessage, BoundedContext, Envelope, Message};
use a4co_testkit::nats::{NatsCluster, NatsServer};
use tokio::sync::mpsc;

use crate::support::{in_inbox, nats_bus, nats_connect, recv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_mid_stream_loses_nothing() {
    let mut f = nats_bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let _ = tx.send(m.aggregate_id);
        std::future::ready(Ok::<(), HandlerError>(()))
    };
    let sub = Subscription::new("t", "crash")
        .to::<OrderCreated>()
        .ack_wait(Duration::from_secs(2));
    let handle = f.bus.subscribe(sub, handler).await.unwrap();

    const N: usize = 300;
    let publish_all = |range: std::ops::Range<usize>| {
        let bus = f.bus.clone();
        async move {
            for n in range {
                let env =
                    Envelope::new("order-service", format!("ord-{n}"), OrderCreated::example());
                // Publishes fail while the server is down: retry the same envelope (same
                // event id, so a retry that had been stored is deduplicated).
                while bus.publish(&env).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let started = std::time::Instant::now();
    publish_all(0..N / 3).await;
    let server = f.server.as_mut().unwrap();
    server.kill();
    let after_kill = tokio::spawn(publish_all(N / 3..N));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    after_kill.await.unwrap();
    eprintln!("published {N} across the crash in {:?}", started.elapsed());
    let mut seen = HashSet::new();
    while seen.len() < N {
        seen.insert(recv(&mut rx, 30, "every message after the restart").await);
    }
    eprintln!("all {N} handled after {:?}", started.elapsed());
    assert_eq!(seen.len(), N, "none lost");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_writes_recently_settled_work_to_the_inbox() {
    // Work the server had settled is kept in memory a little while, not written; a crash
    // of the server may lose its record of the acks, so after a lost connection the
    // subscription writes what it kept.
    let mut f = nats_bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let _ = tx.send(m.event_id.to_string());
        std::future::ready(Ok::<(), HandlerError>(()))
    };
    let sub = Subscription::new("t", "reconnect")
        .to::<OrderCreated>()
        .ack_wait(Duration::from_secs(2));
    let handle = f.bus.subscribe(sub.clone(), handler).await.unwrap();
    let env = Envelope::new("order-service", "ord-1", OrderCreated::example());
    f.bus.publish(&env).await.unwrap();
    let id = recv(&mut rx, 5, "handled").await;
    // Settled at the next look (a quarter of a second at most), not written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !in_inbox(&f, &sub, &id).await.unwrap(),
        "settled work was written"
    );
    f.server.as_mut().unwrap().restart();
    crate::support::eventually(10, "written after the reconnect", || async {
        in_inbox(&f, &sub, &id).await.unwrap_or(false)
    })
    .await;
    assert_eq!(handle.shutdown().await.handled, 1);
}

#[tokio::test]
async fn connecting_to_nothing_or_nonsense_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = NatsBus::connect(
        Config::new(format!("nats://127.0.0.1:{port}")).connect_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::Unavailable, "{err}");
    let err = NatsBus::connect(Config::new("nats://[not a host"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("not a NATS URL"), "{err}");
    let err = NatsBus::connect(Config::new(" , ")).await.unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::InvalidConfig);
}

#[tokio::test]
async fn provisioning_reports_drift_and_changes_nothing() {
    let server = NatsServer::start();
    let bus = NatsBus::connect(Config::new(server.url())).await.unwrap();
    // Someone created ORDERS by hand, keeping messages for one day.
    let odd = StreamSpec {
        max_age: Duration::from_secs(86_400),
        ..StreamSpec::for_context(BoundedContext::Order, 1)
    };
    assert!(bus.transport().ensure_stream(&odd).await.unwrap().created);
    let reports = bus.provision().await.unwrap();
    let orders = reports.iter().find(|r| r.stream == "ORDERS").unwrap();
    assert!(!orders.created);
    assert_eq!(orders.drift.len(), 1, "{:?}", orders.drift);
    assert!(orders.drift[0].contains("max age"), "{:?}", orders.drift);
    assert!(
        reports
            .iter()
            .filter(|r| r.stream != "ORDERS")
            .all(|r| r.created && r.drift.is_empty())
    );
    let mut stream = bus
        .transport()
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.max_age,
        Duration::from_secs(86_400),
        "left as it was"
    );
}

#[tokio::test]
async fn buckets_and_streams_at_fewer_replicas_than_asked_are_reported_not_changed() {
    let server = NatsServer::start();
    let one = NatsBus::connect(Config::new(server.url())).await.unwrap();
    one.provision().await.unwrap();
    let spec = BucketSpec::new("drifting", "a test bucket");
    let (_, created) = one.transport().key_value(&spec).await.unwrap();
    assert!(created.created && created.drift.is_empty(), "{created:?}");
    assert_eq!(one.transport().replicas(), 1);

    // A service configured for three replicas meets what exists at one.
    let three = NatsBus::connect(Config::new(server.url()).replicas(3))
        .await
        .unwrap();
    let (store, report) = three.transport().key_value(&spec).await.unwrap();
    assert_eq!(report.stream, "KV_drifting");
    assert!(!report.created);
    assert_eq!(report.drift, ["replicas are 1, expected 3"], "{report:?}");
    store.put("k", "v".into()).await.unwrap();
    let reports = three.provision().await.unwrap();
    assert!(
        reports
            .iter()
            .all(|r| r.drift == ["replicas are 1, expected 3"]),
        "{reports:#?}"
    );
    let status = store.status().await.unwrap();
    assert_eq!(status.info.config.num_replicas, 1, "left as it was");
    // Another retention than asked is drift too.
    let (_, report) = three
        .transport()
        .key_value(&spec.clone().max_age(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(
        report.drift.iter().any(|d| d.starts_with("max age is 0ns")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_replicate_on_a_three_node_cluster() {
    let cluster = NatsCluster::start();
    let bus = NatsBus::connect(Config::new(cluster.url()).replicas(3))
        .await
        .unwrap();
    let mut reports = None;
    for _ in 0..50 {
        match bus.provision().await {
            Ok(r) => {
                reports = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let reports = reports.expect("the cluster never accepted replicated streams");
    assert!(reports.iter().all(|r| r.drift.is_empty()), "{reports:#?}");
    let mut stream = bus
        .transport()
        .jetstream()
        .get_stream("PAYMENTS")
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.cluster.as_ref().map(|c| c.replicas.len()), Some(2));
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

#[tokio::test]
async fn a_second_connection_sees_the_same_streams() {
    let server = NatsServer::start();
    let a = nats_connect(&server.url()).await;
    let b = nats_connect(&server.url()).await;
    let env = Envelope::new("order-service", "ord-1", OrderCreated::example());
    assert!(!a.publish(&env).await.unwrap().duplicate);
    assert!(
        b.publish(&env).await.unwrap().duplicate,
        "dedup holds across connections"
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = b
        .subscribe(
            Subscription::new("t", "x").to::<OrderCreated>(),
            move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
                let _ = tx.send(m.event_id);
                std::future::ready(Ok::<(), HandlerError>(()))
            },
        )
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, 5, "the message").await, env.event_id);
    h.shutdown().await;
}

#[tokio::test]
async fn publishing_while_the_server_is_down_fails_by_kind_and_recovers() {
    use a4co_events::bus::PublishErrorKind;
    let mut server = NatsServer::start();
    let bus = NatsBus::connect(Config::new(server.url()).ack_timeout(Duration::from_millis(500)))
        .await
        .unwrap();
    bus.provision().await.unwrap();
    server.kill();
    let env = Envelope::new("order-service", "ord-1", OrderCreated::example());
    let err = bus.publish(&env).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            PublishErrorKind::Timeout | PublishErrorKind::ConnectionLost
        ),
        "{err}"
    );
    server.resume();
    let mut stored = None;
    for _ in 0..100 {
        if let Ok(ack) = bus.publish(&env).await {
            stored = Some(ack);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored.expect("published after the restart").stream,
        "ORDERS"
    );
}
