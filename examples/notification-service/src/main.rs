//! notification-service: `cargo run -p example-notification-service` (see the library's docs for
//! its settings).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match notification_service::run(a4co_events::service::Env::from_process()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notification-service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
