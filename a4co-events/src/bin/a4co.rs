//! `a4co`: the SDK's command-line tool.
//!
//! ```text
//! a4co catalog generate [--dir docs/catalog] [--allow-breaking]
//! a4co catalog check    [--dir docs/catalog]
//! a4co catalog show <type> [<version>]
//! a4co dlq list    [--url URL] [--consumer SERVICE/SUBSCRIPTION] [--type TYPE] [--since T] [--until T]
//! a4co dlq show    SEQ [--url URL]
//! a4co dlq replay  SEQ [--url URL]
//! a4co dlq purge   [--url URL] [filters as for list]
//! ```
//!
//! `check` exits 1 when the folder differs from the code, 2 on usage errors. The `dlq`
//! commands talk to NATS at `--url`, else `$NATS_URL`, else `nats://127.0.0.1:4222`.

use std::path::PathBuf;
use std::process::ExitCode;

use a4co_events::bus::dlq::{DeadLetters, Filter};
use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::catalog;
use a4co_events::schema::{self, FindingKind, WriteError};

const USAGE: &str = "\
usage:
  a4co catalog generate [--dir DIR] [--allow-breaking]
      write the catalog (default DIR: docs/catalog); refuses to change a published
      version incompatibly unless --allow-breaking
  a4co catalog check [--dir DIR]
      fail (exit 1) when DIR differs from the code, saying whether the difference
      breaks consumers or only needs `generate`
  a4co catalog show TYPE [VERSION]
      print the published schema of a message (newest version by default)
  a4co dlq list [--url URL] [--consumer SERVICE/SUBSCRIPTION] [--type TYPE]
                [--since RFC3339] [--until RFC3339]
      list dead letters (sequence, time, consumer, type, reason)
  a4co dlq show SEQ [--url URL]
      print one dead letter in full (JSON)
  a4co dlq replay SEQ [--url URL]
      publish the original back to its subject and remove the dead letter
  a4co dlq purge [--url URL] [filters as for list]
      remove the dead letters the filters match
  NATS is --url, else $NATS_URL, else nats://127.0.0.1:4222.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("a4co: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["catalog", "generate", rest @ ..] => {
            let (dir, allow_breaking) = options(rest, true)?;
            match schema::write(&dir, allow_breaking) {
                Ok(report) => {
                    let count = |kind| report.findings.iter().filter(|f| f.kind == kind).count();
                    println!(
                        "wrote {} files to {}: {} new, {} changed, {} removed",
                        report.files,
                        dir.display(),
                        count(FindingKind::Missing),
                        count(FindingKind::OutOfDate) + count(FindingKind::Breaking),
                        count(FindingKind::Stray),
                    );
                    for finding in report
                        .findings
                        .iter()
                        .filter(|f| f.kind == FindingKind::Breaking)
                    {
                        println!("{finding}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(WriteError::Breaking(report)) => {
                    eprintln!(
                        "{report}\nnothing written; pass --allow-breaking to overwrite anyway"
                    );
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.to_string()),
            }
        }
        ["catalog", "check", rest @ ..] => {
            let (dir, _) = options(rest, false)?;
            let report =
                schema::check(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            if report.is_clean() {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} differs from the code:\n{report}", dir.display());
                Ok(ExitCode::FAILURE)
            }
        }
        ["catalog", "show", type_name, rest @ ..] => {
            let version = match rest {
                [] => catalog::versions(type_name).max(),
                [v] => Some(
                    v.trim_start_matches('v')
                        .parse()
                        .map_err(|_| format!("not a version: {v}"))?,
                ),
                _ => return Err("too many arguments".into()),
            };
            let info = version
                .and_then(|v| catalog::find(type_name, v))
                .ok_or_else(|| {
                    format!(
                        "no message {type_name} {}",
                        version.map(|v| format!("v{v}")).unwrap_or_default()
                    )
                })?;
            let text = serde_json::to_string_pretty(&schema::message_schema(info))
                .map_err(|e| e.to_string())?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        ["dlq", rest @ ..] => dlq(rest),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("unknown command: {}", words.join(" "))),
    }
}

fn dlq(args: &[&str]) -> Result<ExitCode, String> {
    let (command, rest) = args
        .split_first()
        .ok_or("dlq needs a command: list, show, replay or purge")?;
    let mut url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let mut filter = Filter::default();
    let mut sequence = None;
    let time = |v: &str| {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| format!("{v:?} is not an RFC 3339 time ({e}), e.g. 2026-11-23T08:00:00Z"))
    };
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().copied().ok_or(format!("{arg} needs a value"));
        match *arg {
            "--url" => url = value()?.to_owned(),
            "--consumer" => filter.consumer = Some(value()?.to_owned()),
            "--type" => filter.event_type = Some(value()?.to_owned()),
            "--since" => filter.since = Some(time(value()?)?),
            "--until" => filter.until = Some(time(value()?)?),
            other if sequence.is_none() && other.parse::<u64>().is_ok() => {
                sequence = other.parse().ok();
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    let needs_sequence = matches!(*command, "show" | "replay");
    let sequence = match (needs_sequence, sequence) {
        (true, Some(s)) => s,
        (true, None) => {
            return Err(format!(
                "dlq {command} needs the dead letter's sequence (see dlq list)"
            ));
        }
        (false, Some(_)) => return Err(format!("dlq {command} takes filters, not a sequence")),
        (false, None) => 0,
    };
    if !matches!(*command, "list" | "show" | "replay" | "purge") {
        return Err(format!("unknown dlq command: {command}"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let bus = NatsBus::connect(Config::new(&url).name("a4co-cli"))
            .await
            .map_err(|e| e.to_string())?;
        let tools = DeadLetters::new(bus.transport().clone());
        match *command {
            "list" => {
                let letters = tools.list(&filter).await.map_err(|e| e.to_string())?;
                println!(
                    "{:>6}  {:<20}  {:<28}  {:<28}  reason",
                    "seq", "dead-lettered", "consumer", "type"
                );
                for (seq, l) in &letters {
                    println!(
                        "{seq:>6}  {:<20}  {:<28}  {:<28}  {}",
                        l.dead_lettered_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        l.consumer,
                        l.event_type.as_deref().unwrap_or("-"),
                        l.reason
                    );
                }
                println!("{} dead letter(s)", letters.len());
            }
            "show" => {
                let letter = tools.show(sequence).await.map_err(|e| e.to_string())?;
                let letter = letter.ok_or(format!("no dead letter with sequence {sequence}"))?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&letter).map_err(|e| e.to_string())?
                );
            }
            "replay" => {
                let ack = tools.replay(sequence).await.map_err(|e| e.to_string())?;
                println!(
                    "replayed dead letter {sequence} as {} sequence {}",
                    ack.stream, ack.sequence
                );
            }
            _ => {
                let removed = tools.purge(&filter).await.map_err(|e| e.to_string())?;
                println!("purged {removed} dead letter(s)");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn options(rest: &[&str], allow_flag: bool) -> Result<(PathBuf, bool), String> {
    let mut dir = PathBuf::from("docs/catalog");
    let mut allow_breaking = false;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--dir" => dir = PathBuf::from(it.next().ok_or("--dir needs a folder")?),
            "--allow-breaking" if allow_flag => allow_breaking = true,
            other => return Err(format!("unknown option: {other}")),
        }
    }
    Ok((dir, allow_breaking))
}
