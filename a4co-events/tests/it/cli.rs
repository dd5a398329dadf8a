//! The `a4co` binary, run as a user would.

use std::process::{Command, Output};

use a4co_events::bus::{
    DeliveryInfo, HandlerError, Publisher, RawMessage, Subscriber, Subscription,
};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::{AnyMessage, Envelope, Headers, Message};
use tokio::sync::mpsc;

use crate::support::{eventually, nats_bus, recv};

fn a4co(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_a4co"))
        .args(args)
        .output()
        .expect("the a4co binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_replays_and_purges_dead_letters() {
    let f = nats_bus().await;
    let url = f.server.as_ref().unwrap().url();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let _ = tx.send(m.aggregate_id);
        let fail = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(if fail {
            Err(HandlerError::permanent("stock record corrupt"))
        } else {
            Ok(())
        })
    };
    let handle = f
        .bus
        .subscribe(
            Subscription::new("inventory-service", "orders").to::<OrderCreated>(),
            handler,
        )
        .await
        .unwrap();
    f.bus
        .publish(&Envelope::new(
            "order-service",
            "ord-42",
            OrderCreated::example(),
        ))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, 5, "first try").await, "ord-42");
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;

    let list = a4co(&["dlq", "list", "--url", &url]);
    assert!(list.status.success(), "{list:?}");
    let text = stdout(&list);
    assert!(text.contains("inventory-service/orders"), "{text}");
    assert!(text.contains("order.created"), "{text}");
    assert!(text.contains("permanent: stock record corrupt"), "{text}");
    assert!(text.contains("1 dead letter(s)"), "{text}");
    let filtered = stdout(&a4co(&[
        "dlq",
        "list",
        "--url",
        &url,
        "--consumer",
        "someone/else",
    ]));
    assert!(filtered.contains("0 dead letter(s)"), "{filtered}");
    let seq = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let show = a4co(&["dlq", "show", &seq, "--url", &url]);
    let letter: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(letter["consumer"], "inventory-service/orders");
    assert_eq!(letter["errorChain"][0], "stock record corrupt");

    let replay = a4co(&["dlq", "replay", &seq, "--url", &url]);
    assert!(replay.status.success(), "{replay:?}");
    assert!(
        stdout(&replay).contains("replayed dead letter"),
        "{replay:?}"
    );
    assert_eq!(recv(&mut rx, 10, "the replay").await, "ord-42");
    eventually(10, "the replay handled", || async {
        handle.stats().handled == 1
    })
    .await;
    assert!(stdout(&a4co(&["dlq", "list", "--url", &url])).contains("0 dead letter(s)"));

    // A second dead letter, undecodable this time, for purge to remove.
    let junk = RawMessage {
        subject: "order.created".into(),
        headers: Headers::new(),
        payload: bytes::Bytes::from_static(b"not json"),
    };
    f.bus.publish_raw(junk).await.unwrap();
    eventually(10, "the junk dead-lettered", || async {
        handle.stats().dead_lettered == 2
    })
    .await;
    let other = a4co(&["dlq", "purge", "--url", &url, "--consumer", "someone/else"]);
    assert!(
        stdout(&other).contains("purged 0 dead letter(s)"),
        "{other:?}"
    );
    let purge = a4co(&[
        "dlq",
        "purge",
        "--url",
        &url,
        "--consumer",
        "inventory-service/orders",
    ]);
    assert!(
        stdout(&purge).contains("purged 1 dead letter(s)"),
        "{purge:?}"
    );
    assert!(stdout(&a4co(&["dlq", "list", "--url", &url])).contains("0 dead letter(s)"));
    handle.shutdown().await;
}

#[test]
fn the_cli_explains_bad_usage() {
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let out = a4co(&["dlq", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("<SEQ>"), "{}", stderr(&out));
    let out = a4co(&["dlq", "list", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
    // An unknown command is looked for as a tool `a4co-<command>`; none: says so.
    let out = a4co(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no tool a4co-frobnicate"),
        "{}",
        stderr(&out)
    );
}

#[cfg(unix)]
#[test]
fn other_commands_run_the_tool_of_their_name_and_exit_as_it_does() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("a4co-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join("a4co-hello");
    std::fs::write(&tool, "#!/bin/sh\necho \"hello $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_a4co"))
        .args(["hello", "aside", "--json"])
        .env("PATH", path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(stdout(&out), "hello aside --json\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&a4co(&["--help"])).contains("a4co saga"));
}

#[test]
fn every_command_has_help_and_the_tool_a_version() {
    for command in [
        &["catalog", "generate"][..],
        &["catalog", "check"],
        &["catalog", "show"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["dlq", "purge"],
    ] {
        let out = a4co(&[command, &["--help"]].concat());
        assert!(out.status.success(), "{command:?}: {out:?}");
        let text = stdout(&out);
        assert!(
            text.contains(&format!("Usage: a4co {}", command.join(" "))),
            "{command:?}: {text}"
        );
    }
    let version = a4co(&["--version"]);
    assert_eq!(
        stdout(&version).trim(),
        format!("a4co {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn catalog_check_fails_on_a_stale_folder_and_passes_after_generate() {
    let dir = std::env::temp_dir().join(format!("a4co-cli-catalog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let stale = a4co(&["catalog", "check", "--dir", d]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("run `a4co catalog generate`"));
    assert!(a4co(&["catalog", "generate", "--dir", d]).status.success());
    let fresh = a4co(&["catalog", "check", "--dir", d]);
    assert!(fresh.status.success(), "{fresh:?}");
    let show = a4co(&["catalog", "show", "order.created", "1"]);
    let schema: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(schema["title"], "order.created v1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_json_dry_runs_follows_references_and_guards_replays() {
    let f = nats_bus().await;
    let url = f.server.as_ref().unwrap().url();
    let handle = f
        .bus
        .subscribe(
            Subscription::new("inventory-service", "big").to::<OrderCreated>(),
            |_: Envelope<AnyMessage>, _: DeliveryInfo| {
                std::future::ready(Err::<(), _>(HandlerError::permanent("never fits")))
            },
        )
        .await
        .unwrap();
    let mut big = OrderCreated::example();
    big.customer_id = "c".repeat(972 * 1024);
    f.bus
        .publish(&Envelope::new("order-service", "ord-big", big))
        .await
        .unwrap();
    eventually(10, "dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;
    let json_lines = |out: &Output| -> Vec<serde_json::Value> {
        assert!(out.status.code().is_some(), "{out:?}");
        stdout(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let list = |extra: &[&str]| {
        let mut args = vec!["dlq", "list", "--json", "--url", &url];
        args.extend_from_slice(extra);
        json_lines(&a4co(&args))
    };
    let letters = list(&[]);
    let [letter] = letters.as_slice() else {
        panic!("one letter: {letters:?}")
    };
    assert_eq!(letter["payloadByReference"], true);
    assert_eq!(letter["replays"], 0);
    let seq = letter["sequence"].as_u64().unwrap().to_string();

    // show follows the reference to the original's stream.
    let shown = json_lines(&a4co(&["dlq", "show", &seq, "--json", "--url", &url]));
    let [shown] = shown.as_slice() else {
        panic!("one line: {shown:?}")
    };
    assert_eq!(shown["payloadEncoding"], "reference");
    let original: serde_json::Value =
        serde_json::from_str(shown["originalPayload"].as_str().unwrap()).unwrap();
    assert_eq!(
        original["data"]["customerId"].as_str().map(str::len),
        Some(972 * 1024)
    );

    // Dry runs change nothing.
    let dry = json_lines(&a4co(&[
        "dlq",
        "replay",
        &seq,
        "--dry-run",
        "--json",
        "--url",
        &url,
    ]));
    assert_eq!(dry[0]["dryRun"], true);
    assert_eq!(dry[0]["consumer"], "inventory-service/big");
    assert!(dry[0].get("published").is_none(), "{dry:?}");
    let dry = json_lines(&a4co(&[
        "dlq",
        "purge",
        "--dry-run",
        "--json",
        "--url",
        &url,
    ]));
    assert_eq!(dry[0]["purged"][0].as_u64(), letter["sequence"].as_u64());
    assert_eq!(list(&[]).len(), 1, "dry runs removed nothing");
    assert_eq!(handle.stats().dead_lettered, 1, "and replayed nothing");

    // Three replays fail again; the fourth needs --force.
    let mut seq = seq;
    for replays in 1..=3 {
        let done = json_lines(&a4co(&["dlq", "replay", &seq, "--json", "--url", &url]));
        assert_eq!(done[0]["replay"], replays, "{done:?}");
        assert!(done[0]["published"]["sequence"].is_u64(), "{done:?}");
        eventually(10, "dead-lettered again", || async {
            handle.stats().dead_lettered == 1 + replays
        })
        .await;
        let letters = list(&[]);
        assert_eq!(letters[0]["replays"], replays);
        seq = letters[0]["sequence"].as_u64().unwrap().to_string();
    }
    assert_eq!(list(&[])[0]["replayRefused"], true);
    let refused = a4co(&["dlq", "replay", &seq, "--url", &url]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("replayed 3 times") && why.contains("--force"),
        "{why}"
    );
    let forced = a4co(&["dlq", "replay", &seq, "--force", "--url", &url]);
    assert!(forced.status.success(), "{forced:?}");
    assert!(stdout(&forced).contains("(replay 4)"), "{forced:?}");
    eventually(10, "dead-lettered after the forced replay", || async {
        handle.stats().dead_lettered == 5
    })
    .await;
    let purged = json_lines(&a4co(&["dlq", "purge", "--all", "--json", "--url", &url]));
    assert_eq!(purged[0]["purged"].as_array().map(Vec::len), Some(1));
    assert!(list(&[]).is_empty());
    handle.shutdown().await;
}

/// Guards against: `--help` printed `NATS_URL` as set, password included (clap
/// shows an argument's environment value); `dlq purge` without a filter removed every letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_hides_the_nats_url_and_purge_without_a_filter_asks_for_all() {
    let secret = "s3cret-in-help";
    for args in [&["dlq", "list", "--help"][..], &["dlq", "purge", "--help"]] {
        let help = Command::new(env!("CARGO_BIN_EXE_a4co"))
            .args(args)
            .env("NATS_URL", format!("nats://app:{secret}@127.0.0.1:4222"))
            .output()
            .unwrap();
        assert!(help.status.success(), "{help:?}");
        let text = stdout(&help);
        assert!(
            text.contains("NATS_URL"),
            "the variable is still named: {text}"
        );
        assert!(
            !text.contains(secret),
            "{args:?} prints the password: {text}"
        );
    }

    let f = nats_bus().await;
    let url = f.server.as_ref().unwrap().url();
    let handle = f
        .bus
        .subscribe(
            Subscription::new("inventory-service", "orders").to::<OrderCreated>(),
            |_: Envelope<AnyMessage>, _: DeliveryInfo| std::future::ready(Ok(())),
        )
        .await
        .unwrap();
    let junk = RawMessage {
        subject: "order.created".into(),
        headers: Headers::new(),
        payload: bytes::Bytes::from_static(b"not json"),
    };
    f.bus.publish_raw(junk).await.unwrap();
    eventually(10, "the junk dead-lettered", || async {
        handle.stats().dead_lettered == 1
    })
    .await;

    let refused = a4co(&["dlq", "purge", "--url", &url]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(why.contains("--all"), "{why}");
    assert!(
        stdout(&a4co(&["dlq", "list", "--url", &url])).contains("1 dead letter(s)"),
        "nothing was purged"
    );
    let all = a4co(&["dlq", "purge", "--url", &url, "--all"]);
    assert!(stdout(&all).contains("purged 1 dead letter(s)"), "{all:?}");
    // A filter and --all together: which one is meant is unclear.
    let both = a4co(&[
        "dlq",
        "purge",
        "--url",
        &url,
        "--all",
        "--type",
        "order.created",
    ]);
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    handle.shutdown().await;
}
