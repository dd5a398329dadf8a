//! `a4co`: the SDK's command-line tool (feature `cli`). `a4co --help` lists the commands,
//! `a4co <command> --help` explains one.
//!
//! `catalog check` exits 1 when the folder differs from the code; every command exits 2 on
//! a usage error. The `dlq` commands talk to NATS at `--url`, else `$NATS_URL`, else
//! `nats://127.0.0.1:4222`, with the credentials and TLS of the other `NATS_*` variables
//! (see `Config::from_env`).

use std::path::PathBuf;
use std::process::ExitCode;

use a4co_events::bus::dlq::{DeadLetters, Filter, ReplayOptions};
use a4co_events::bus::nats::{Config, NatsBus};
use a4co_events::contract::{self, FindingKind, WriteError};
use a4co_events::{catalog, schema};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

/// The a4co SDK's tool: the message catalog and the dead-letter stream.
#[derive(Debug, Parser)]
#[command(
    name = "a4co",
    version,
    after_help = "Other commands run the tool `a4co-<command>` found beside a4co or on PATH:\n  a4co saga ...   the saga store on NATS: records set aside, an instance (a4co-saga, feature `cli`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The published message catalog (docs/catalog).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// The dead-letter stream on NATS.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// `a4co <name> ...` runs `a4co-<name> ...` (`a4co saga` runs a4co-saga's tool).
    #[command(external_subcommand)]
    External(Vec<String>),
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Writes the catalog; refuses to change a published version incompatibly unless
    /// --allow-breaking.
    Generate {
        /// The catalog folder.
        #[arg(long, default_value = "docs/catalog")]
        dir: PathBuf,
        /// Overwrite a published version even where the change breaks its consumers.
        #[arg(long)]
        allow_breaking: bool,
    },
    /// Fails (exit 1) when the folder differs from the code, saying whether the difference
    /// breaks consumers or only needs `generate`.
    Check {
        /// The catalog folder.
        #[arg(long, default_value = "docs/catalog")]
        dir: PathBuf,
    },
    /// Prints the published schema of a message.
    Show {
        /// The message type, e.g. order.created.
        #[arg(value_name = "TYPE")]
        type_name: String,
        /// The version (`2` or `v2`); the newest by default.
        #[arg(value_parser = parse_version)]
        version: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Lists dead letters (sequence, time, consumer, type, replays, reason).
    List {
        #[command(flatten)]
        nats: Nats,
        #[command(flatten)]
        filter: Filters,
    },
    /// Prints one dead letter in full (JSON); a letter that refers to its original (too
    /// large to hold it) shows the original's payload read from its stream.
    Show {
        /// The dead letter's stream sequence (see `dlq list`).
        seq: u64,
        #[command(flatten)]
        nats: Nats,
    },
    /// Publishes each original back to its subject, for the consumer that dead-lettered it
    /// only, and removes the dead letter.
    Replay {
        /// The dead letters' stream sequences (see `dlq list`).
        #[arg(required = true)]
        seq: Vec<u64>,
        /// Replay a letter even if it was replayed 3 times and failed again.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        nats: Nats,
    },
    /// Removes the dead letters the filters match; with no filter, `--all` says to remove
    /// every one (a `--dry-run` needs neither).
    Purge {
        /// Remove every dead letter (instead of a filter).
        #[arg(long, conflicts_with_all = ["consumer", "event_type", "since", "until"])]
        all: bool,
        #[command(flatten)]
        nats: Nats,
        #[command(flatten)]
        filter: Filters,
    },
}

#[derive(Debug, Args)]
struct Nats {
    /// The NATS server.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    url: String,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Change nothing: say what would be replayed or purged (list and show change nothing
    /// anyway).
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct Filters {
    /// Only letters of this consumer (SERVICE/SUBSCRIPTION).
    #[arg(long)]
    consumer: Option<String>,
    /// Only letters of this message type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only letters written at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only letters written before this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
}

impl From<Filters> for Filter {
    fn from(f: Filters) -> Self {
        Filter {
            consumer: f.consumer,
            event_type: f.event_type,
            since: f.since,
            until: f.until,
        }
    }
}

fn parse_version(v: &str) -> Result<u32, String> {
    v.trim_start_matches('v')
        .parse()
        .map_err(|_| format!("{v:?} is not a version (2 or v2)"))
}

fn parse_time(v: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{v:?} is not an RFC 3339 time ({e}), e.g. 2026-11-23T08:00:00Z"))
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Catalog(command) => catalog(command),
        Command::Dlq(command) => dlq(command),
        Command::External(args) => external(&args),
    };
    result.unwrap_or_else(|message| {
        eprintln!("a4co: {message}");
        ExitCode::from(2)
    })
}

fn catalog(command: CatalogCommand) -> Result<ExitCode, String> {
    match command {
        CatalogCommand::Generate {
            dir,
            allow_breaking,
        } => match contract::write(&dir, allow_breaking) {
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
                eprintln!("{report}\nnothing written; pass --allow-breaking to overwrite anyway");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.to_string()),
        },
        CatalogCommand::Check { dir } => {
            let report =
                contract::check(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            if report.is_clean() {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} differs from the code:\n{report}", dir.display());
                Ok(ExitCode::FAILURE)
            }
        }
        CatalogCommand::Show { type_name, version } => {
            let version = version.or_else(|| catalog::versions(&type_name).max());
            let info = version
                .and_then(|v| catalog::find(&type_name, v))
                .ok_or_else(|| {
                    let v = version.map(|v| format!(" v{v}")).unwrap_or_default();
                    format!("no message {type_name}{v} in the catalog")
                })?;
            let text = serde_json::to_string_pretty(&schema::message_schema(info))
                .map_err(|e| e.to_string())?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `a4co-<name>` (beside this executable, else on PATH) with the other arguments,
/// and exits as it does.
fn external(args: &[String]) -> Result<ExitCode, String> {
    let Some((name, rest)) = args.split_first() else {
        return Err("no command given: see a4co --help".to_owned());
    };
    let tool = format!("a4co-{name}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&tool)))
        .filter(|path| path.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(&tool));
    match std::process::Command::new(&program).args(rest).status() {
        Ok(status) => Ok(ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "a4co has no command {name:?}, and no tool {tool} is installed beside it or on PATH (see a4co --help; `saga` comes with a4co-saga: cargo install a4co-saga)"
        )),
        Err(e) => Err(format!("cannot run {}: {e}", program.display())),
    }
}

fn dlq(command: DlqCommand) -> Result<ExitCode, String> {
    let (url, json, dry_run) = match &command {
        DlqCommand::List { nats, .. }
        | DlqCommand::Show { nats, .. }
        | DlqCommand::Replay { nats, .. }
        | DlqCommand::Purge { nats, .. } => (nats.url.clone(), nats.json, nats.dry_run),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let config = Config::from_env_at(&url).map_err(|e| e.to_string())?;
        let bus = NatsBus::connect(config.name("a4co-cli"))
            .await
            .map_err(|e| e.to_string())?;
        let tools = DeadLetters::new(bus.transport().clone());
        let line = |value: serde_json::Value| println!("{value}");
        match command {
            DlqCommand::List { filter, .. } => {
                let letters = tools
                    .list(&filter.into())
                    .await
                    .map_err(|e| e.to_string())?;
                if json {
                    for (seq, l) in &letters {
                        line(serde_json::json!({
                            "sequence": seq,
                            "deadLetteredAt": l.dead_lettered_at,
                            "consumer": l.consumer,
                            "eventType": l.event_type,
                            "fault": l.fault,
                            "reason": l.reason,
                            "replays": l.replays,
                            "replayRefused": l.replay_exhausted(),
                            "payloadByReference": l.is_reference(),
                        }));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:>6}  {:<20}  {:<28}  {:<28}  {:>7}  reason",
                    "seq", "dead-lettered", "consumer", "type", "replays"
                );
                for (seq, l) in &letters {
                    // `3!`: replayed to the limit; replay refuses it without --force.
                    let replays = format!(
                        "{}{}",
                        l.replays,
                        if l.replay_exhausted() { "!" } else { "" }
                    );
                    println!(
                        "{seq:>6}  {:<20}  {:<28}  {:<28}  {replays:>7}  {}",
                        l.dead_lettered_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        l.consumer,
                        l.event_type.as_deref().unwrap_or("-"),
                        l.reason
                    );
                }
                println!("{} dead letter(s)", letters.len());
            }
            DlqCommand::Show { seq, .. } => {
                let letter = tools.show(seq).await.map_err(|e| e.to_string())?;
                let letter = letter.ok_or(format!("no dead letter with sequence {seq}"))?;
                let mut value = serde_json::to_value(&letter).map_err(|e| e.to_string())?;
                value["sequence"] = seq.into();
                if letter.is_reference() {
                    // Follow the reference: the payload as its stream keeps it.
                    value["originalPayload"] = match tools.original(&letter).await {
                        Ok(original) => match std::str::from_utf8(&original.payload) {
                            Ok(text) => text.into(),
                            Err(_) => {
                                use base64::Engine as _;
                                base64::engine::general_purpose::STANDARD
                                    .encode(&original.payload)
                                    .into()
                            }
                        },
                        Err(e) => return Err(e.to_string()),
                    };
                }
                let text = if json {
                    value.to_string()
                } else {
                    serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
                };
                println!("{text}");
            }
            DlqCommand::Replay { seq, force, .. } => {
                let options = ReplayOptions { force, dry_run };
                let mut failed = false;
                for seq in seq {
                    match tools.replay(seq, options).await {
                        Ok(done) if json => {
                            let mut value =
                                serde_json::to_value(&done).map_err(|e| e.to_string())?;
                            value["dryRun"] = dry_run.into();
                            line(value);
                        }
                        Ok(done) => {
                            let to = format!(
                                "dead letter {seq} to {} for {} (replay {})",
                                done.subject, done.consumer, done.replay
                            );
                            match done.published {
                                Some(ack) => println!(
                                    "replayed {to} as {} sequence {}",
                                    ack.stream, ack.sequence
                                ),
                                None => println!("would replay {to}; dry run, nothing published"),
                            }
                        }
                        Err(e) => {
                            failed = true;
                            if json {
                                line(serde_json::json!({"sequence": seq, "error": e.to_string()}));
                            } else {
                                eprintln!("a4co: {e}");
                            }
                        }
                    }
                }
                if failed {
                    return Ok(ExitCode::FAILURE);
                }
            }
            DlqCommand::Purge { filter, all, .. } => {
                let filtered = filter.consumer.is_some()
                    || filter.event_type.is_some()
                    || filter.since.is_some()
                    || filter.until.is_some();
                if !filtered && !all && !dry_run {
                    use clap::CommandFactory as _;
                    Cli::command()
                        .error(
                            clap::error::ErrorKind::MissingRequiredArgument,
                            "dlq purge without a filter removes every dead letter: say --all, \
                             or give --consumer, --type, --since or --until (--dry-run shows \
                             what would go)",
                        )
                        .exit();
                }
                let removed = tools
                    .purge(&filter.into(), dry_run)
                    .await
                    .map_err(|e| e.to_string())?;
                if json {
                    line(serde_json::json!({"purged": removed, "dryRun": dry_run}));
                } else if dry_run {
                    println!(
                        "would purge {} dead letter(s): {removed:?}; dry run, nothing removed",
                        removed.len()
                    );
                } else {
                    println!("purged {} dead letter(s): {removed:?}", removed.len());
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
