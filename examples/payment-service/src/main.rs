//! payment-service: `cargo run -p example-payment-service` (see the library's docs for
//! its settings).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match payment_service::run(a4co_events::service::Env::from_process()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payment-service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
