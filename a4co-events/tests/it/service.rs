//! The service runtime: records with compare-and-swap in memory and on a real JetStream KV
//! bucket, the bus switch, and workers stopped together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use a4co_events::service::{AnyBus, Records, RecordsError, StartErrorKind, Workers};
use a4co_testkit::nats::NatsServer;

use crate::support::eventually;

/// Two handles on one store: in memory a clone, on NATS the bucket opened twice.
async fn races_are_settled_by_compare_and_swap(a: Records, b: Records) {
    let first = a.put("stock.sku-1", &10_u32, None).await.unwrap();
    assert!(
        matches!(
            b.put("stock.sku-1", &99_u32, None).await,
            Err(RecordsError::Conflict(_))
        ),
        "creating an existing record conflicts"
    );
    let second = b.put("stock.sku-1", &9_u32, Some(first)).await.unwrap();
    assert!(second > first);
    assert!(
        matches!(
            a.put("stock.sku-1", &8_u32, Some(first)).await,
            Err(RecordsError::Conflict(_))
        ),
        "a write from a stale read conflicts"
    );

    // 40 decrements from two handles at once: every one lands exactly once.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let records = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            records
                .modify("stock.sku-2", |n: Option<&u32>| {
                    let next = n.copied().unwrap_or(100) - 1;
                    (Some(next), next)
                })
                .await
                .unwrap()
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers.sort_unstable();
    assert_eq!(
        answers,
        (60..100).collect::<Vec<u32>>(),
        "each saw its own value"
    );
    let stored = a.get::<u32>("stock.sku-2").await.unwrap().unwrap();
    assert_eq!(stored.value, 60);

    assert_eq!(
        b.all::<u32>("stock.").await.unwrap(),
        [
            ("stock.sku-1".to_owned(), 9),
            ("stock.sku-2".to_owned(), 60)
        ]
    );
    assert!(matches!(
        a.get::<u32>("bad key").await,
        Err(RecordsError::InvalidKey(_))
    ));
    a.put("text", &"not a number", None).await.unwrap();
    assert!(matches!(
        b.get::<u32>("text").await,
        Err(RecordsError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn memory_records_settle_races() {
    let records = Records::memory();
    races_are_settled_by_compare_and_swap(records.clone(), records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_records_settle_races_and_outlive_the_handle() {
    let server = NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "records-test", 1)
        .await
        .unwrap();
    assert_eq!(bus.kind(), "nats");
    let a = Records::open(&bus, "records_test").await.unwrap();
    let b = Records::open(&bus, "records_test").await.unwrap();
    races_are_settled_by_compare_and_swap(a, b).await;

    // Another connection (another instance of the service) sees the same records.
    let other = AnyBus::connect(Some(&server.url()), "records-test-2", 1)
        .await
        .unwrap();
    let c = Records::open(&other, "records_test").await.unwrap();
    assert_eq!(c.get::<u32>("stock.sku-1").await.unwrap().unwrap().value, 9);
}

/// Records under an expiring prefix leave on their own; listings read one prefix; a
/// removed or expired record can be created again.
async fn expiring_records_leave_and_listings_follow_the_prefix(records: Records) {
    let records = records.expire("idem.", Duration::from_secs(1));
    let first = records.put("idem.a", &1_u32, None).await.unwrap();
    assert!(matches!(
        records.put("idem.a", &2_u32, None).await,
        Err(RecordsError::Conflict(_))
    ));
    records.put("idem.a", &2_u32, Some(first)).await.unwrap();
    assert!(matches!(
        records.put("idem.a", &3_u32, Some(first)).await,
        Err(RecordsError::Conflict(_))
    ));
    records.put("keep.b", &1_u32, None).await.unwrap();
    records.put("keep.c", &1_u32, None).await.unwrap();
    assert_eq!(records.keys("idem.").await.unwrap(), ["idem.a"]);
    assert_eq!(records.keys("keep.").await.unwrap(), ["keep.b", "keep.c"]);
    assert_eq!(records.keys("").await.unwrap().len(), 3);

    records.remove("keep.b").await.unwrap();
    records.remove("keep.missing").await.unwrap();
    assert_eq!(records.keys("keep.").await.unwrap(), ["keep.c"]);
    assert!(records.get::<u32>("keep.b").await.unwrap().is_none());
    records.put("keep.b", &5_u32, None).await.unwrap();

    eventually(10, "the expiring record leaves", || async {
        records.get::<u32>("idem.a").await.unwrap().is_none()
    })
    .await;
    assert!(records.keys("idem.").await.unwrap().is_empty());
    records.put("idem.a", &7_u32, None).await.unwrap();
    let kept = records.all::<u32>("keep.").await.unwrap();
    assert_eq!(kept, [("keep.b".to_owned(), 5), ("keep.c".to_owned(), 1)]);
}

#[tokio::test]
async fn memory_records_expire_and_list_by_prefix() {
    expiring_records_leave_and_listings_follow_the_prefix(Records::memory()).await;
}

#[tokio::test]
async fn kv_records_expire_and_list_by_prefix() {
    let server = NatsServer::start();
    let bus = AnyBus::connect(Some(&server.url()), "records-test", 1)
        .await
        .unwrap();
    let records = Records::open(&bus, "records_ttl").await.unwrap();
    expiring_records_leave_and_listings_follow_the_prefix(records).await;
}

#[tokio::test]
async fn records_opened_on_the_memory_bus_live_in_memory() {
    let bus = AnyBus::connect(None, "records-test", 1).await.unwrap();
    assert_eq!(bus.kind(), "memory");
    let records = Records::open(&bus, "anything").await.unwrap();
    records.put("k", &1_u8, None).await.unwrap();
    assert_eq!(records.get::<u8>("k").await.unwrap().unwrap().value, 1);
}

#[tokio::test]
async fn an_unreachable_server_fails_at_start_up_naming_it() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let err = AnyBus::connect(Some(&url), "t", 1).await.unwrap_err();
    assert_eq!(err.kind(), StartErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    let err = AnyBus::connect(Some("http://127.0.0.1:1"), "t", 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StartErrorKind::InvalidConfig, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_together_and_wait_for_work_under_way() {
    let runs = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicU64::new(0));
    let mut workers = Workers::new();
    let (r, f) = (Arc::clone(&runs), Arc::clone(&finished));
    workers.every(Duration::from_millis(10), move || {
        let (r, f) = (Arc::clone(&r), Arc::clone(&f));
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            f.fetch_add(1, Ordering::SeqCst);
        }
    });
    let s = Arc::clone(&stopped);
    workers.other(move |graceful| async move {
        assert!(graceful);
        s.fetch_add(1, Ordering::SeqCst);
    });
    eventually(10, "three runs", || async {
        runs.load(Ordering::SeqCst) >= 3
    })
    .await;
    workers.shutdown().await;
    let after = runs.load(Ordering::SeqCst);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        after,
        "a run under way finished"
    );
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
}
