//! **marketplace-demo**, the README's first command: every a4co reference service in one
//! process, a catalog of Jaén's artisans, a mix of orders (some confirmed, some finding no
//! stock, some with a declined card), progress while they run, and a summary: orders by
//! outcome, stock before and after, notifications sent, latency p50/p99.
//!
//! ```text
//! cargo run -p example-marketplace-demo                      # in-memory bus
//! cargo run -p example-marketplace-demo -- --nats nats://127.0.0.1:4222
//! cargo run -p example-marketplace-demo -- --orders 2000 --concurrency 64   # load
//! cargo run -p example-marketplace-demo -- serve inventory   # one service, as its own process
//! ```
//!
//! ```
//! use marketplace_demo::{Marketplace, Plan, Settings, run};
//! use a4co_events::service::AnyBus;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = a4co_http::auth::Secret::new("a-demo-secret-of-at-least-32-bytes")?;
//! let market = Marketplace::start(AnyBus::connect(None, "demo", 1).await?, Settings::new(secret)).await?;
//! let plan = Plan { orders: Some(20), progress: false, ..Plan::default() };
//! let summary = run(&market, &plan, "in-memory bus".into()).await?;
//! assert_eq!(summary.confirmed, 20);
//! market.stop().await;
//! # Ok(())
//! # }
//! ```

pub mod marketplace;
pub mod scenario;

use std::time::Duration;

use a4co_events::service::AnyBus;
use a4co_events::service::{Env, StartError};
use a4co_http::auth::Secret;

pub use marketplace::{Marketplace, Settings};
pub use scenario::{Plan, Summary, run};

/// What the command line asks for.
#[derive(Clone, Debug)]
pub enum Command {
    /// The demo, on NATS when a URL is given.
    Demo {
        /// The orders to place.
        plan: Plan,
        /// `--nats`, or `NATS_URL`.
        nats_url: Option<String>,
    },
    /// One service as its own process (`serve order|inventory|payment|notification`).
    Serve(String),
    /// `--help`.
    Help,
}

/// How to call it.
pub const USAGE: &str = "\
usage: marketplace-demo [--orders N] [--concurrency C] [--settle] [--nats URL] [--quiet]
       marketplace-demo serve order|inventory|payment|notification

  (no option)      the showcase: 40 orders, some confirmed, some out of stock, some declined
  --orders N       a load run of N ordinary orders, reporting orders/s
  --concurrency C  orders placed at once (default 8)
  --settle         each placer waits for its order's outcome before the next: with
                   --concurrency 1, the latency of one order alone (without it, placing
                   outruns the rest and latency is mostly time queued)
  --nats URL       run on NATS JetStream (default: $NATS_URL, else the in-memory bus);
                   credentials, TLS and NATS_REPLICAS come from the NATS_* variables
  --quiet          no progress lines
  serve NAME       run one service until Ctrl-C, configured by its environment variables

The demo reads the services' variables too: PAYMENT_LATENCY_MS (the simulated gateway,
default 20), PAYMENT_DECLINE_*, ORDER_*_SECS (the saga's timings), INVENTORY_*.";

/// Reads the command line (`args` without the program name).
///
/// # Errors
/// An unknown option or a bad number, with the usage.
pub fn parse(args: &[String], env: &Env) -> Result<Command, String> {
    let mut plan = Plan::default();
    let mut nats_url = env.optional("NATS_URL");
    let mut rest = args.iter();
    let number = |flag: &str, value: Option<&String>| -> Result<usize, String> {
        value
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a whole number above zero\n\n{USAGE}"))
    };
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--orders" => plan.orders = Some(number("--orders", rest.next())?),
            "--concurrency" => plan.concurrency = number("--concurrency", rest.next())?,
            "--nats" => {
                nats_url = Some(
                    rest.next()
                        .cloned()
                        .ok_or_else(|| format!("--nats needs a URL\n\n{USAGE}"))?,
                );
            }
            "--quiet" => plan.progress = false,
            "--settle" => plan.settle = true,
            "--help" | "-h" => return Ok(Command::Help),
            "serve" => {
                let name = rest.next().map(String::as_str).unwrap_or_default();
                return match name {
                    "order" | "inventory" | "payment" | "notification" => {
                        Ok(Command::Serve(name.to_owned()))
                    }
                    _ => Err(format!("serve needs a service name\n\n{USAGE}")),
                };
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if let Some(n) = plan.orders {
        plan.patience = Duration::from_secs(30).max(Duration::from_millis(n as u64 * 20));
    }
    Ok(Command::Demo { plan, nats_url })
}

/// Runs the demo and prints its summary, or serves one service.
///
/// # Errors
/// What went wrong, saying what to fix.
pub async fn execute(command: Command, env: Env) -> Result<(), StartError> {
    match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Serve(name) => match name.as_str() {
            "order" => order_service::run(env).await,
            "inventory" => inventory_service::run(env).await,
            "payment" => payment_service::run(env).await,
            _ => notification_service::run(env).await,
        },
        Command::Demo { plan, nats_url } => {
            a4co_events::service::init(
                "marketplace-demo",
                "warn",
                a4co_events::service::LogFormat::Text,
            )?;
            // One process: the services' tokens never leave it, so a secret made for this
            // run does (unless one is given).
            let secret = match env.optional(a4co_http::auth::SECRET_ENV) {
                Some(_) => service_kit::jwt_secret(&env)?,
                None => Secret::new(format!(
                    "{:032x}{:032x}",
                    fastrand::u128(..),
                    fastrand::u128(..)
                ))
                .map_err(|e| StartError::invalid_config(e.to_string()))?,
            };
            let nats = env.nats_at(nats_url.as_deref())?;
            let mode = match &nats {
                Some(config) => format!("NATS JetStream at {}", config.shown_urls()),
                None => "in-memory bus".to_owned(),
            };
            let on_nats = nats.is_some();
            let bus = AnyBus::open(nats.map(|c| c.name("marketplace-demo"))).await?;
            let market = Marketplace::start(bus, Settings::from_env(secret, &env)?).await?;
            eprintln!(
                "a4co marketplace: order, inventory, payment and notification services started on the {mode}"
            );
            if !on_nats {
                eprintln!(
                    "(set NATS_URL or pass --nats URL to run on NATS JetStream; scripts/nats-server starts one)"
                );
            }
            let summary = run(&market, &plan, mode).await;
            market.stop().await;
            a4co_events::service::shutdown().await;
            println!("{}", summary?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use a4co_events::service::Env;

    use super::{Command, parse};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_command_line() {
        let env = Env::from_pairs([("NATS_URL", "nats://127.0.0.1:4222")]);
        match parse(
            &args(&[
                "--orders",
                "500",
                "--concurrency",
                "32",
                "--quiet",
                "--settle",
            ]),
            &env,
        ) {
            Ok(Command::Demo { plan, nats_url }) => {
                assert_eq!(
                    (plan.orders, plan.concurrency, plan.progress, plan.settle),
                    (Some(500), 32, false, true)
                );
                assert_eq!(nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&args(&["serve", "payment"]), &env), Ok(Command::Serve(s)) if s == "payment")
        );
        for bad in [
            &["--orders", "0"][..],
            &["--orders"],
            &["--fast"],
            &["serve", "shipping"],
        ] {
            let err = parse(&args(bad), &env).unwrap_err();
            assert!(err.contains("usage:"), "{err}");
        }
    }

    #[tokio::test]
    async fn settled_orders_are_placed_one_after_the_others_outcome() {
        let secret = a4co_http::auth::Secret::new("0123456789abcdef0123456789abcdef").unwrap();
        let bus = a4co_events::service::AnyBus::connect(None, "demo-test", 1)
            .await
            .unwrap();
        let env = Env::from_pairs([("PAYMENT_LATENCY_MS", "0")]);
        let market =
            crate::Marketplace::start(bus, crate::Settings::from_env(secret, &env).unwrap())
                .await
                .unwrap();
        let plan = crate::Plan {
            orders: Some(5),
            concurrency: 1,
            settle: true,
            progress: false,
            ..crate::Plan::default()
        };
        let summary = crate::run(&market, &plan, "memory".into()).await.unwrap();
        assert_eq!((summary.confirmed, summary.unfinished), (5, 0));
        // One in flight at a time, so the run lasts the sum of the five latencies, which is
        // at least three times the median (the three from the median up); orders placed
        // without waiting would overlap and take about the longest one.
        assert!(summary.elapsed >= summary.latency.0 * 3, "{summary}");
        market.stop().await;
    }

    #[test]
    fn the_demo_runs_the_services_as_their_variables_say() {
        let secret = || a4co_http::auth::Secret::new("0123456789abcdef0123456789abcdef").unwrap();
        let env = Env::from_pairs([
            ("PAYMENT_LATENCY_MS", "0"),
            ("ORDER_PAYMENT_TIMEOUT_SECS", "60"),
            ("INVENTORY_SWEEP_INTERVAL_MS", "250"),
        ]);
        let settings = crate::Settings::from_env(secret(), &env).unwrap();
        assert_eq!(settings.gateway.latency, std::time::Duration::ZERO);
        assert_eq!(settings.saga.payment_timeout.as_secs(), 60);
        assert_eq!(settings.inventory.sweep_interval.as_millis(), 250);
        let defaults =
            crate::Settings::from_env(secret(), &Env::from_pairs::<&str, &str>([])).unwrap();
        assert_eq!(defaults.gateway.latency.as_millis(), 20);
        let bad = Env::from_pairs([("PAYMENT_LATENCY_MS", "soon")]);
        let err = crate::Settings::from_env(secret(), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PAYMENT_LATENCY_MS"), "{err}");
    }
}
