//! Traces and metrics: the consumer's span is a child of the publisher's, across the bus,
//! and the design-v2 metrics count what happened.

use std::time::Duration;

use a4co_events::bus::{
    DeliveryInfo, EventBus, HandlerError, Publisher, Subscriber, Subscription, Transport,
};
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
    assert_eq!(publish.name, "order.created publish");
    assert_eq!(process.name, "order.created process");
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
