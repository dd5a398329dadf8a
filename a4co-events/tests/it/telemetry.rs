//! Traces and metrics: the consumer's span is a child of the publisher's, across the bus,
//! and the design-v2 metrics count what happened.

use std::time::Duration;

use a4co_events::bus::transport::Transport;
use a4co_events::bus::{DeliveryInfo, EventBus, HandlerError, Publisher, Subscriber, Subscription};
use a4co_events::catalog::order::OrderCreated;
use a4co_events::{AnyMessage, Envelope, Message};
use a4co_testkit::telemetry::Telemetry;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::support::recv;

async fn check<T: Transport>(t: &Telemetry, bus: EventBus<T>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let _ = tx.send(m.event_id);
        std::future::ready(Ok::<(), HandlerError>(()))
    };
    let handle = bus
        .subscribe(
            Subscription::new("inventory-service", "otel").to::<OrderCreated>(),
            handler,
        )
        .await
        .unwrap();
    let env = Envelope::new("order-service", "ord-1", OrderCreated::example());
    bus.publish(&env)
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, 10, "the message").await, env.event_id);
    // The handling span ends when settling does: give it a moment.
    for _ in 0..100 {
        if t.spans
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| s.span_kind == SpanKind::Consumer)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await;
    t.tracer_provider.force_flush().unwrap();

    let spans = t.spans.get_finished_spans().unwrap();
    let find = |kind: SpanKind| -> SpanData {
        spans
            .iter()
            .find(|s| s.span_kind == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} span in {spans:#?}"))
    };
    let root = spans
        .iter()
        .find(|s| s.name == "checkout")
        .expect("the application's span");
    let publish = find(SpanKind::Producer);
    let process = find(SpanKind::Consumer);
    // OpenTelemetry's messaging conventions: `{operation} {destination}` and the
    // operation's type and name.
    assert_eq!(publish.name, "publish order.created");
    assert_eq!(process.name, "process order.created");
    let attribute = |span: &SpanData, key: &str| -> String {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
            .unwrap_or_else(|| panic!("{key} missing on {}: {:?}", span.name, span.attributes))
    };
    for (span, operation, kind) in [
        (&publish, "publish", "send"),
        (&process, "process", "process"),
    ] {
        assert_eq!(attribute(span, "messaging.operation.name"), operation);
        assert_eq!(attribute(span, "messaging.operation.type"), kind);
        assert_eq!(
            attribute(span, "messaging.destination.name"),
            "order.created"
        );
        assert_eq!(attribute(span, "messaging.system"), "nats");
        assert!(
            span.attributes
                .iter()
                .all(|kv| kv.key.as_str() != "error.type")
        );
    }
    assert_eq!(
        publish.parent_span_id,
        root.span_context.span_id(),
        "publish is a child of the caller's span"
    );
    assert_eq!(
        process.span_context.trace_id(),
        publish.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(
        process.parent_span_id,
        publish.span_context.span_id(),
        "the consumer's span is a child of the publisher's"
    );
    assert!(process.parent_span_is_remote);
    // What identifies the message, for every log line written while handling it.
    for (key, value) in [
        ("aggregate_id", env.aggregate_id.clone()),
        ("correlation_id", env.metadata.correlation_id.clone()),
        ("messaging.message.id", env.event_id.to_string()),
        ("trace_id", process.span_context.trace_id().to_string()),
    ] {
        assert_eq!(attribute(&process, key), value, "{key}");
    }
    t.spans.reset();

    t.meter_provider.force_flush().unwrap();
    let exported = t.metrics.get_finished_metrics().unwrap();
    let metrics: Vec<_> = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .collect();
    let has = |attrs: Vec<&KeyValue>, key: &str, value: &str| {
        attrs
            .iter()
            .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
    };
    let published = metrics
        .iter()
        .find(|m| m.name() == "microservices_events_published")
        .expect("published counter");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = published.data() else {
        panic!("not a u64 sum")
    };
    let point = sum.data_points().next().expect("a data point");
    assert!(point.value() >= 1);
    let attrs: Vec<_> = point.attributes().collect();
    assert!(
        has(attrs.clone(), "service", "order-service")
            && has(attrs.clone(), "event_type", "order.created")
            && has(attrs, "subject", "order.created")
    );
    let processed = metrics
        .iter()
        .find(|m| m.name() == "microservices_events_processed")
        .expect("processed counter");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = processed.data() else {
        panic!("not a u64 sum")
    };
    assert!(
        sum.data_points()
            .any(|p| has(p.attributes().collect(), "status", "success")
                && has(p.attributes().collect(), "service", "inventory-service"))
    );
    let duration = metrics
        .iter()
        .find(|m| m.name() == "microservices_event_processing_duration")
        .expect("duration histogram");
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = duration.data() else {
        panic!("not an f64 histogram")
    };
    assert!(h.data_points().map(|p| p.count()).sum::<u64>() >= 1);
    t.metrics.reset();
}

#[test]
fn consumer_spans_are_children_of_publisher_spans_and_metrics_count() {
    // One runtime thread, so the thread-local tracing subscriber sees every task.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (telemetry, _guard) = Telemetry::install();
    runtime.block_on(async {
        // Buses are created after the providers are installed, as the docs ask.
        check(&telemetry, crate::support::memory_bus().await.bus).await;
        let nats = crate::support::nats_bus().await;
        check(&telemetry, nats.bus.clone()).await;
        drop(nats);
    });
}

/// The value of gauge or counter `name` at the point whose labels include `labels`, as
/// exported now.
fn point_value(t: &Telemetry, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    t.meter_provider.force_flush().unwrap();
    let exported = t.metrics.get_finished_metrics().unwrap();
    t.metrics.reset();
    let metric = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == name)?;
    let matches = |attrs: Vec<&KeyValue>| {
        labels.iter().all(|(k, v)| {
            attrs
                .iter()
                .any(|kv| kv.key.as_str() == *k && kv.value.as_str() == *v)
        })
    };
    match metric.data() {
        AggregatedMetrics::U64(MetricData::Gauge(g)) => g
            .data_points()
            .find(|p| matches(p.attributes().collect()))
            .map(|p| p.value()),
        AggregatedMetrics::U64(MetricData::Sum(s)) => s
            .data_points()
            .find(|p| matches(p.attributes().collect()))
            .map(|p| p.value()),
        _ => panic!("{name} is not a u64 gauge or sum"),
    }
}

/// A consumer stuck on its first message: its lag (`a4co_consumer_pending`) and unsettled
/// deliveries show on the gauges, without anything else asking the broker; a permanent
/// failure counts a dead letter by consumer and reason, and shows in the DLQ depth.
#[test]
fn a_consumers_backlog_and_its_dead_letters_are_measured() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (telemetry, _guard) = Telemetry::install();
    runtime.block_on(async {
        let nats = crate::support::nats_bus().await;
        let bus = nats.bus.clone();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let waiter = std::sync::Arc::clone(&release);
        // The first order is refused for good; the second holds the only lane until
        // released; the rest wait in the stream.
        let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
            let waiter = std::sync::Arc::clone(&waiter);
            async move {
                match m.aggregate_id.as_str() {
                    "ord-0" => Err(HandlerError::permanent("refused")),
                    "ord-1" => {
                        waiter.notified().await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        };
        for n in 0..12 {
            let env = Envelope::new("order-service", format!("ord-{n}"), OrderCreated::example());
            bus.publish(&env).await.unwrap();
        }
        let handle = bus
            .subscribe(
                Subscription::new("inventory-service", "backlog")
                    .to::<OrderCreated>()
                    .max_in_flight(1)
                    .max_ack_pending(2),
                handler,
            )
            .await
            .unwrap();
        let consumer = [
            ("service", "inventory-service"),
            ("consumer", "inventory-service/backlog"),
            ("stream", "ORDERS"),
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let waiting = loop {
            let waiting = point_value(&telemetry, "a4co_consumer_pending", &consumer);
            if waiting.is_some_and(|w| w >= 8) {
                break waiting;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lag never showed: {waiting:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(waiting <= Some(10), "{waiting:?}");
        let unsettled = point_value(&telemetry, "a4co_consumer_ack_pending", &consumer);
        assert!(
            unsettled.is_some_and(|u| (1..=2).contains(&u)),
            "{unsettled:?}"
        );
        assert_eq!(
            point_value(
                &telemetry,
                "a4co_dead_letters",
                &[
                    ("consumer", "inventory-service/backlog"),
                    ("reason", "permanent")
                ]
            ),
            Some(1)
        );
        // The letter kept in DLQ, counted in the background at least every 5 s.
        let letter = [
            ("service", "inventory-service"),
            ("consumer", "inventory-service/backlog"),
        ];
        loop {
            let depth = point_value(&telemetry, "a4co_dlq_depth", &letter);
            if depth == Some(1) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the DLQ depth never showed: {depth:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        release.notify_one();
        handle.shutdown().await;
        drop(nats);
    });
}

/// A message that arrives without trace context (a bridge that sets only the event id)
/// starts a trace at its handling, with no OpenTelemetry layer at all: the handler's
/// envelope carries it, and so does what the handler sends on its behalf.
#[tokio::test]
async fn a_message_without_trace_context_starts_a_trace_at_its_handling() {
    use a4co_events::bus::RawMessage;
    use a4co_events::catalog::order::OrderConfirmed;
    use a4co_events::headers::{Headers, TraceContext, names};
    let f = crate::support::memory_bus().await;
    let bus = f.bus.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let follow = bus.clone();
    let handler = move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
        let (tx, follow) = (tx.clone(), follow.clone());
        async move {
            let reply = Envelope::caused_by(
                &m,
                "order-service",
                m.aggregate_id.clone(),
                OrderConfirmed::example(),
            );
            follow
                .publish(&reply)
                .await
                .map_err(HandlerError::retryable)?;
            let _ = tx.send(m.trace.clone());
            Ok::<(), HandlerError>(())
        }
    };
    let handle = bus
        .subscribe(
            Subscription::new("t", "untraced").to::<OrderCreated>(),
            handler,
        )
        .await
        .unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let confirmations = bus
        .subscribe(
            Subscription::new("t", "follow").to::<OrderConfirmed>(),
            move |m: Envelope<AnyMessage>, _: DeliveryInfo| {
                let _ = seen_tx.send(m.trace);
                std::future::ready(Ok::<(), HandlerError>(()))
            },
        )
        .await
        .unwrap();
    let env = Envelope::new("bridge", "ord-9", OrderCreated::example());
    let mut headers = Headers::new();
    headers.insert(names::MSG_ID, env.event_id.to_string());
    // Straight to the transport: the bus would add trace context.
    bus.transport()
        .publish(RawMessage {
            subject: "order.created".into(),
            headers,
            payload: env.to_json().into(),
        })
        .await
        .unwrap();
    let started: Option<TraceContext> = recv(&mut rx, 10, "the handling").await;
    let started = started.expect("the handler's envelope has a trace");
    let followed: Option<TraceContext> = recv(&mut seen, 10, "the follow-up").await;
    let followed = followed.expect("the follow-up has a trace");
    assert_eq!(followed.trace_id(), started.trace_id(), "one trace");
    handle.shutdown().await;
    confirmations.shutdown().await;
}

/// Guards against: the processed metric's `subject` label copied from input (any subject a
/// filter such as `order.>` lets in), so junk subjects fill the series cap.
#[test]
fn junk_subjects_are_one_series() {
    use a4co_events::bus::RawMessage;
    use a4co_events::headers::Headers;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (telemetry, _guard) = Telemetry::install();
    runtime.block_on(async {
        let nats = crate::support::nats_bus().await;
        let bus = nats.bus.clone();
        let handle = bus
            .subscribe(
                Subscription::new("inventory-service", "junk").subject("order.>"),
                |_: Envelope<AnyMessage>, _: DeliveryInfo| async { Ok::<_, HandlerError>(()) },
            )
            .await
            .unwrap();
        for n in 0..5 {
            bus.transport()
                .publish(RawMessage {
                    subject: format!("order.junk-{n}"),
                    headers: Headers::new(),
                    payload: b"{}".to_vec().into(),
                })
                .await
                .unwrap();
        }
        // A catalog subject with a body that breaks it keeps its own label.
        bus.transport()
            .publish(RawMessage {
                subject: "order.created".into(),
                headers: Headers::new(),
                payload: b"{}".to_vec().into(),
            })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while handle.stats().dead_lettered < 6 {
            assert!(tokio::time::Instant::now() < deadline, "{}", handle.stats());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        handle.shutdown().await;
        telemetry.meter_provider.force_flush().unwrap();
        let exported = telemetry.metrics.get_finished_metrics().unwrap();
        let processed = exported
            .iter()
            .flat_map(|r| r.scope_metrics())
            .flat_map(|s| s.metrics())
            .find(|m| m.name() == "microservices_events_processed")
            .expect("the processed counter");
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = processed.data() else {
            panic!("not a u64 sum")
        };
        let mut by_subject = std::collections::BTreeMap::<String, u64>::new();
        for point in sum.data_points() {
            let subject = point
                .attributes()
                .find(|kv| kv.key.as_str() == "subject")
                .map(|kv| kv.value.to_string())
                .unwrap_or_default();
            *by_subject.entry(subject).or_default() += point.value();
        }
        let expected = std::collections::BTreeMap::from([
            ("order.created".to_owned(), 1),
            ("unknown".to_owned(), 5),
        ]);
        assert_eq!(by_subject, expected);
        drop(nats);
    });
}
