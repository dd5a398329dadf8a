//! `a4co-saga`: what an operator asks of the saga store on NATS (feature `cli`). Run it as
//! `a4co saga <command>` (the `a4co` tool hands `saga` commands to it) or directly;
//! `--help` lists the commands.
//!
//! It talks to NATS at `--url`, else `$NATS_URL`, else `nats://127.0.0.1:4222`, with the
//! credentials and TLS of the other `NATS_*` variables (see `Config::from_env`). It exits 1
//! when the store cannot be read, 2 on a usage error.

use std::process::ExitCode;

use a4co_events::bus::nats::{Config, NatsTransport};
use a4co_saga::Store as _;
use a4co_saga::nats::KvStore;
use clap::{Args, Parser, Subcommand};

/// The saga store on NATS: instances, and the records set aside.
#[derive(Debug, Parser)]
#[command(name = "a4co saga", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the records set aside because they cannot be read (instance, when, why):
    /// their messages are dead-lettered and their timers no longer fire until they are
    /// repaired or deleted.
    Aside {
        #[command(flatten)]
        nats: Nats,
    },
    /// Prints one instance's record as stored (JSON: state, data, definition version,
    /// timers, messages waiting, history), with its revision.
    Show {
        /// The instance, `<saga>/<correlation id>` (`order-fulfillment/ord-1`).
        saga_id: String,
        #[command(flatten)]
        nats: Nats,
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
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    let (Command::Aside { nats } | Command::Show { nats, .. }) = &command;
    let json = nats.json;
    let config = Config::from_env_at(&nats.url).map_err(|e| e.to_string())?;
    let transport = NatsTransport::connect(config.name("a4co-saga-cli"))
        .await
        .map_err(|e| e.to_string())?;
    let store = KvStore::open(&transport).await.map_err(|e| e.to_string())?;
    match command {
        Command::Aside { .. } => {
            let aside = store.set_aside().await.map_err(|e| e.to_string())?;
            if json {
                for a in &aside {
                    println!(
                        "{}",
                        serde_json::json!({"sagaId": a.key, "setAsideAt": a.at, "reason": a.reason})
                    );
                }
            } else if aside.is_empty() {
                println!("no record set aside");
            } else {
                for a in &aside {
                    println!("{}  {}  {}", a.key, a.at.to_rfc3339(), a.reason);
                }
            }
        }
        Command::Show { saga_id, .. } => {
            let Some(stored) = store.load(&saga_id).await.map_err(|e| e.to_string())? else {
                return Err(format!("no instance {saga_id:?}"));
            };
            let record = serde_json::from_slice::<serde_json::Value>(&stored.record)
                .unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&stored.record).into_owned())
                });
            let shown = serde_json::json!({"sagaId": saga_id, "revision": stored.revision, "record": record});
            if json {
                println!("{shown}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&shown).unwrap_or_else(|_| shown.to_string())
                );
            }
        }
    }
    Ok(())
}
