//! The public types and the futures of the public async fns can cross threads.

use a4co_http::auth::{Issuer, RequireLayer, Verifier};
use a4co_http::{Call, Client, ConfigError, Error, Response};

fn is_send<T: Send>(_: &T) {}
fn is_send_sync<T: Send + Sync>() {}
fn is_clone<T: Clone>() {}

#[test]
fn types_are_send_sync_and_handles_clone() {
    is_send_sync::<Client>();
    is_send_sync::<Call>();
    is_send_sync::<Error>();
    is_send_sync::<ConfigError>();
    is_send_sync::<Response>();
    is_send_sync::<Issuer>();
    is_send_sync::<Verifier>();
    is_send_sync::<RequireLayer>();
    is_clone::<Client>();
    is_clone::<Issuer>();
    is_clone::<Verifier>();
}

#[test]
fn call_futures_are_send() {
    let client = Client::builder("t", "http://127.0.0.1:9").build().unwrap();
    // Built, never polled: only their types are checked.
    is_send(&client.get("/x").send());
    is_send(&client.get("/x").send_json::<serde_json::Value>());
    is_send(&client.get_json::<serde_json::Value>("/x"));
    is_send(&client.post_json::<_, serde_json::Value>("/x", &1));
}
