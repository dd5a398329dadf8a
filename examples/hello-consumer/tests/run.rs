//! The hello-consumer binary as a team runs it: in memory and against a real nats-server,
//! stopped with Ctrl-C (SIGINT), its final counts read from its output.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use a4co_events::bus::dlq::{DeadLetters, Filter};
use a4co_events::bus::nats::{self, NatsBus};
use a4co_testkit::nats::NatsServer;

/// The binary, started with `nats_url` (or none: the in-memory bus), its stdout lines
/// forwarded to the receiver.
fn start(nats_url: Option<&str>) -> (Child, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_example-hello-consumer"));
    command.env_remove("NATS_URL").env_remove("NATS_REPLICAS");
    if let Some(url) = nats_url {
        command.env("NATS_URL", url);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the hello-consumer: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until every one of `wanted` has been seen (in any order); all lines read.
fn read_until(rx: &mpsc::Receiver<String>, wanted: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.contains(w)))
    {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("waiting for {wanted:?} ({e}); the consumer printed {seen:#?}"),
        }
    }
    seen
}

/// Sends SIGINT (what Ctrl-C sends) and returns the rest of the output once it exits.
fn interrupt(mut child: Child, rx: &mpsc::Receiver<String>) -> Vec<String> {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(status.success(), "kill -INT failed");
    let exit = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(exit.success(), "the consumer exited with {exit}");
    rx.iter().collect()
}

const HANDLED: [&str; 3] = [
    "consuming on the",
    "ord-1: handled on attempt 1",
    "ord-slow: handled on attempt 2",
];
const STATS: &str = "handled 2, duplicates 0, retried 1, dead-lettered 1";

#[test]
fn in_memory_it_retries_one_order_and_dead_letters_another() {
    let (child, rx) = start(None);
    let seen = read_until(&rx, &HANDLED);
    // Handling may print before the "consuming" line: look for it anywhere.
    assert!(
        seen.iter()
            .any(|l| l.contains("consuming on the memory bus")),
        "{seen:?}"
    );
    let rest = interrupt(child, &rx);
    assert_eq!(
        rest.last().map(String::as_str),
        Some(STATS),
        "{seen:?} {rest:?}"
    );
    let all: Vec<_> = seen.iter().chain(&rest).collect();
    assert!(
        !all.iter().any(|l| l.contains("ord-bad")),
        "ord-bad was handled: {all:?}"
    );
}

#[test]
fn on_nats_the_dead_letter_is_in_the_stream_and_stops_with_ctrl_c() {
    let server = NatsServer::start();
    let (child, rx) = start(Some(&server.url()));
    let seen = read_until(&rx, &HANDLED);
    assert!(
        seen.iter().any(|l| l.contains("consuming on the nats bus")),
        "{seen:?}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let letters = runtime.block_on(async {
        let bus = NatsBus::connect(nats::Config::new(server.url()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let tools = DeadLetters::new(bus.transport().clone());
        loop {
            let letters = tools
                .list(&Filter::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if !letters.is_empty() {
                break letters;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (_, letter) = &letters[0];
    assert_eq!(letter.consumer, "hello-consumer/orders", "{letter:?}");
    assert_eq!(
        letter.event_type.as_deref(),
        Some("order.created"),
        "{letter:?}"
    );
    assert_eq!(letter.reason, "permanent: unknown customer", "{letter:?}");

    let rest = interrupt(child, &rx);
    assert_eq!(
        rest.last().map(String::as_str),
        Some(STATS),
        "{seen:?} {rest:?}"
    );
}

#[test]
fn a_bad_setting_stops_it_at_start_up_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_example-hello-consumer"))
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("NATS_REPLICAS", "three")
        .output()
        .unwrap_or_else(|e| panic!("cannot start the hello-consumer: {e}"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NATS_REPLICAS"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "it consumed nothing: {:?}",
        out.stdout
    );
}
