//! The marketplace demo: `cargo run -p example-marketplace-demo` (`-- --help` for options).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let env = a4co_events::service::Env::from_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match marketplace_demo::parse(&args, &env) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("{usage}");
            return std::process::ExitCode::from(2);
        }
    };
    match marketplace_demo::execute(command, env).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("marketplace-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
