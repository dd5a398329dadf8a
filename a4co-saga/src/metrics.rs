//! The runtime's instruments, on OpenTelemetry's global meter with the `otel` feature
//! (nothing without it), named the OpenTelemetry way (Prometheus adds `_total` and
//! `_seconds`):
//!
//! - `a4co_saga_started{saga, version}`: instances started;
//! - `a4co_saga_finished{saga, version, outcome}`: instances that reached a final state,
//!   `outcome` `completed`, `compensated` or `failed` ([`crate::Outcome`]);
//! - `a4co_saga_timer_lag{saga}` (histogram, seconds): how late timers fired after they
//!   were due (the tick, a busy or absent runtime);
//! - `a4co_saga_instances_waiting{saga, state}` (gauge): instances in each state that is
//!   not final, as the runtime's last census counted them ([`crate::Runtime::census`]);
//! - `a4co_saga_records_set_aside{saga}`: records that could not be read.
//!
//! Each move is counted once, by the runtime whose save made it.

use crate::record::{Instance, Outcome};

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

/// An instance's saved messages were refused by the broker for good (a message it will not
/// take as it is): `a4co_saga_outbox_refused_total` in Prometheus, by saga. Counted once
/// per instance and refusal, however often it is tried again.
#[cfg(feature = "otel")]
pub(crate) fn outbox_refused(saga: &str) {
    use std::sync::OnceLock;
    static COUNTER: OnceLock<opentelemetry::metrics::Counter<u64>> = OnceLock::new();
    COUNTER
        .get_or_init(|| {
            opentelemetry::global::meter("a4co-saga")
                .u64_counter("a4co_saga_outbox_refused")
                .with_description("Saga instances whose saved messages the broker refused for good")
                .build()
        })
        .add(1, &[opentelemetry::KeyValue::new("saga", saga.to_owned())]);
}

#[cfg(not(feature = "otel"))]
pub(crate) fn outbox_refused(_: &str) {}

/// An instance moved from `before` (none: it started) to where it is now, saved.
pub(crate) fn moved<D: crate::Data, S: crate::State>(before: Option<S>, instance: &Instance<D, S>) {
    let started = before.is_none();
    let finished = before
        .is_none_or(|b| !b.is_final())
        .then(|| instance.outcome());
    if started || finished.flatten().is_some() {
        record_moved(
            &instance.ledger.definition,
            instance.ledger.version,
            started,
            finished.flatten(),
        );
    }
}

#[cfg(feature = "otel")]
fn record_moved(saga: &str, version: u32, started: bool, finished: Option<Outcome>) {
    use std::sync::OnceLock;
    static COUNTERS: OnceLock<[opentelemetry::metrics::Counter<u64>; 2]> = OnceLock::new();
    let [start, finish] = COUNTERS.get_or_init(|| {
        let meter = opentelemetry::global::meter("a4co-saga");
        [
            meter
                .u64_counter("a4co_saga_started")
                .with_description("Saga instances started, by definition and version")
                .build(),
            meter
                .u64_counter("a4co_saga_finished")
                .with_description(
                    "Saga instances that reached a final state, by definition, version and \
                     outcome (completed, compensated, failed)",
                )
                .build(),
        ]
    });
    let labels = [
        opentelemetry::KeyValue::new("saga", saga.to_owned()),
        opentelemetry::KeyValue::new("version", i64::from(version)),
    ];
    if started {
        start.add(1, &labels);
    }
    if let Some(outcome) = finished {
        let [saga, version] = labels;
        finish.add(
            1,
            &[
                saga,
                version,
                opentelemetry::KeyValue::new("outcome", outcome.as_str()),
            ],
        );
    }
}

#[cfg(not(feature = "otel"))]
fn record_moved(_: &str, _: u32, _: bool, _: Option<Outcome>) {}

/// Timers of `saga` fired `lags` seconds after they were due.
#[cfg(feature = "otel")]
pub(crate) fn timers_fired(saga: &str, lags: &[f64]) {
    use std::sync::OnceLock;
    static LAG: OnceLock<opentelemetry::metrics::Histogram<f64>> = OnceLock::new();
    let lag = LAG.get_or_init(|| {
        opentelemetry::global::meter("a4co-saga")
            .f64_histogram("a4co_saga_timer_lag")
            .with_description("How late saga timers fired after they were due")
            .with_unit("s")
            .with_boundaries(vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0])
            .build()
    });
    let labels = [opentelemetry::KeyValue::new("saga", saga.to_owned())];
    for seconds in lags {
        lag.record(*seconds, &labels);
    }
}

#[cfg(not(feature = "otel"))]
pub(crate) fn timers_fired(_: &str, _: &[f64]) {}

/// The census of `saga`: instances waiting by state.
#[cfg(feature = "otel")]
pub(crate) fn waiting(saga: &str, counts: &std::collections::BTreeMap<&'static str, u64>) {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    type Census = Mutex<BTreeMap<(String, &'static str), u64>>;
    static CENSUS: OnceLock<(
        std::sync::Arc<Census>,
        opentelemetry::metrics::ObservableGauge<u64>,
    )> = OnceLock::new();
    let (census, _) = CENSUS.get_or_init(|| {
        let census: std::sync::Arc<Census> = std::sync::Arc::default();
        let read = std::sync::Arc::clone(&census);
        let gauge = opentelemetry::global::meter("a4co-saga")
            .u64_observable_gauge("a4co_saga_instances_waiting")
            .with_description("Saga instances in each state that is not final, at the last census")
            .with_callback(move |observer| {
                let census = read.lock().unwrap_or_else(PoisonError::into_inner);
                for ((saga, state), n) in census.iter() {
                    observer.observe(
                        *n,
                        &[
                            opentelemetry::KeyValue::new("saga", saga.clone()),
                            opentelemetry::KeyValue::new("state", *state),
                        ],
                    );
                }
            })
            .build();
        (census, gauge)
    });
    let mut census = census.lock().unwrap_or_else(PoisonError::into_inner);
    for (state, n) in counts {
        census.insert((saga.to_owned(), state), *n);
    }
}

#[cfg(not(feature = "otel"))]
pub(crate) fn waiting(_: &str, _: &std::collections::BTreeMap<&'static str, u64>) {}
