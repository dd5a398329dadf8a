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

#[tokio::test]
async fn a_cluster_of_three_holds_a_replicated_stream() {
    let cluster = NatsCluster::start();
    assert_eq!(cluster.urls().len(), 3);
    let js = jetstream(&cluster.urls(), Duration::from_secs(5)).await;
    let mut created = None;
    // The meta leader may take a moment after the nodes report healthy.
    for _ in 0..50 {
        match js
            .create_stream(stream::Config {
                name: "REPL".into(),
                subjects: vec!["repl.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
        {
            Ok(s) => {
                created = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut s = created.expect("the cluster never accepted a replicated stream");
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
