//! The nats-server fixture against the real binary.

use std::time::Duration;

use a4co_testkit::nats::{NatsCluster, NatsServer};
use async_nats::jetstream::{self, stream};

async fn jetstream(urls: &[String], ack_timeout: Duration) -> jetstream::Context {
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .unwrap();
    jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .build(client)
}

#[tokio::test]
async fn a_server_starts_with_jetstream_and_a_fresh_store() {
    let server = NatsServer::start();
    assert!(server.url().starts_with("nats://127.0.0.1:"));
    let js = jetstream(&[server.url()], Duration::from_secs(5)).await;
    let mut s = js
        .create_stream(stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("t.a", "x".into()).await.unwrap().await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    assert!(server.store_dir().is_dir());
    let version = js.query_account().await.map(|_| ()).is_ok();
    assert!(version, "JetStream answers account queries");
}

#[tokio::test]
async fn two_servers_get_different_ports_and_stores() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}

#[tokio::test]
async fn dropping_the_server_kills_it_and_removes_its_store() {
    let server = NatsServer::start();
    let (store, port) = (server.store_dir(), server.port());
    drop(server);
    assert!(!store.exists(), "{} left behind", store.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn a_restart_keeps_the_store_and_clients_reconnect() {
    let mut server = NatsServer::start();
    // A publish sent while the server is down is lost; a short ack timeout retries it sooner.
    let js = jetstream(&[server.url()], Duration::from_millis(500)).await;
    js.create_stream(stream::Config {
        name: "R".into(),
        subjects: vec!["r.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..3 {
        js.publish(format!("r.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    server.kill();
    assert!(!server.is_running());
    server.resume();
    assert!(server.is_running());
    // The same client publishes again once it has reconnected by itself.
    let mut acked = None;
    for _ in 0..100 {
        match js.publish("r.after", "y".into()).await {
            Ok(ack) => match ack.await {
                Ok(ack) => {
                    acked = Some(ack);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        acked
            .expect("no publish succeeded after the restart")
            .sequence,
        4,
        "the 3 earlier messages survived"
    );
}

/// Creates an R3 stream, trying again while the cluster's meta leader is still being
/// elected (it may take a moment after the nodes report healthy).
async fn replicated_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> jetstream::stream::Stream {
    for _ in 0..50 {
        let config = stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            num_replicas: 3,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("the cluster never accepted the replicated stream {name}");
}

#[tokio::test]
async fn a_cluster_of_three_holds_a_replicated_stream() {
    let cluster = NatsCluster::start();
    assert_eq!(cluster.urls().len(), 3);
    let js = jetstream(&cluster.urls(), Duration::from_secs(5)).await;
    let mut s = replicated_stream(&js, "REPL", "repl.>").await;
    js.publish("repl.a", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let cluster_info = info
        .cluster
        .as_ref()
        .expect("a clustered stream reports its cluster");
    assert_eq!(cluster_info.replicas.len(), 2, "a leader and two replicas");
}

#[test]
fn a_sync_mode_reaches_the_server() {
    let server = NatsServer::builder().sync_interval("always").start();
    let (status, body) = server.monitor("/varz").expect("/varz answers");
    assert_eq!(status, 200);
    let varz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        varz["jetstream"]["config"]["sync_always"], true,
        "{}",
        varz["jetstream"]
    );

    let default = NatsServer::start();
    let (_, body) = default.monitor("/varz").unwrap();
    let varz: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(varz["jetstream"]["config"]["sync_always"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_is_killed_and_restarted_and_its_stream_leader_found() {
    let mut cluster = NatsCluster::start();
    let js = jetstream(&cluster.urls(), Duration::from_secs(5)).await;
    let mut stream = replicated_stream(&js, "L", "l.>").await;
    let reported = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader);
    let leader = cluster.stream_leader("L").expect("a leader");
    assert_eq!(cluster.nodes()[leader].name(), reported.as_deref());

    cluster.kill(leader);
    assert!(!cluster.nodes()[leader].is_running());
    // Another node takes over.
    let mut next = None;
    for _ in 0..100 {
        next = cluster.stream_leader("L").filter(|n| *n != leader);
        if next.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(next.is_some(), "no new leader after the old one died");
    cluster.resume(leader);
    assert!(cluster.nodes()[leader].is_running());
}
