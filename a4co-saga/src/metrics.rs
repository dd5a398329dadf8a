//! The runtime's counters, on OpenTelemetry's global meter with the `otel` feature
//! (nothing without it).

/// A record that cannot be read was set aside (`a4co_saga_records_set_aside_total` in
/// Prometheus), by saga.
#[cfg(feature = "otel")]
pub(crate) fn set_aside(saga: &str) {
    use std::sync::OnceLock;
    static COUNTER: OnceLock<opentelemetry::metrics::Counter<u64>> = OnceLock::new();
    COUNTER
        .get_or_init(|| {
            opentelemetry::global::meter("a4co-saga")
                .u64_counter("a4co_saga_records_set_aside")
                .with_description("Saga records that could not be read and were set aside")
                .build()
        })
        .add(1, &[opentelemetry::KeyValue::new("saga", saga.to_owned())]);
}

#[cfg(not(feature = "otel"))]
pub(crate) fn set_aside(_: &str) {}
