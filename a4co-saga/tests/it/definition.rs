//! Definitions: what build() rejects, and the diagram.

use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
use a4co_saga::{Definition, DefinitionErrorKind, Outcome, ReactionErrorKind, RuntimeError, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
#[serde(rename_all = "lowercase")]
enum S {
    A,
    B,
    Trap,
    #[state(final)]
    End,
}

/// The derive names states as serde does, and marks finals and failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, State)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    AwaitingPayment,
    #[serde(rename = "shipped")]
    #[state(final)]
    SentOff,
    #[state(final, outcome = "failed")]
    GaveUp,
}

fn builder() -> a4co_saga::Builder<(), S> {
    Definition::<(), S>::builder("test-saga", "test-service")
}

fn problem(result: Result<Definition<(), S>, a4co_saga::DefinitionError>) -> String {
    result.unwrap_err().problem
}

#[test]
fn a_sound_definition_builds_and_takes_its_subjects() {
    let d = builder()
        .starts_with::<OrderCreated>()
        .to(S::A, |_, _| {})
        .on::<OrderConfirmed>(S::A)
        .to(S::End, |_, _| {})
        .build()
        .unwrap();
    assert_eq!(
        d.subjects().collect::<Vec<_>>(),
        ["order.confirmed", "order.created"]
    );
}

#[test]
fn no_start_is_rejected() {
    let p = problem(
        builder()
            .on::<OrderConfirmed>(S::A)
            .to(S::End, |_, _| {})
            .build(),
    );
    assert!(p.contains("no message starts it"), "{p}");
}

#[test]
fn reacting_twice_to_one_message_in_one_state_is_rejected() {
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::A, |_, _| {})
            .on::<OrderConfirmed>(S::A)
            .to(S::End, |_, _| {})
            .on::<OrderConfirmed>(S::A)
            .to(S::B, |_, _| {})
            .on::<OrderConfirmed>(S::B)
            .to(S::End, |_, _| {})
            .build(),
    );
    assert_eq!(p, "state a reacts twice to order.confirmed");
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::A, |_, _| {})
            .on_timeout(S::A, "t")
            .to(S::End, |_| {})
            .on_timeout(S::A, "t")
            .to(S::End, |_| {})
            .build(),
    );
    assert_eq!(p, "state a reacts twice to timeout t");
}

#[test]
fn a_state_that_can_never_finish_is_rejected() {
    // a -> trap, and trap only loops on itself.
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::A, |_, _| {})
            .on::<OrderConfirmed>(S::A)
            .choose([S::Trap, S::End], |_, _| S::End)
            .on_timeout(S::Trap, "again")
            .to(S::Trap, |_| {})
            .build(),
    );
    assert!(
        p.starts_with("state trap can never reach a final state"),
        "{p}"
    );
    // A start state with no way out at all.
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::A, |_, _| {})
            .build(),
    );
    assert!(
        p.starts_with("state a can never reach a final state"),
        "{p}"
    );
}

#[test]
fn a_final_state_that_leaves_or_times_out_and_a_reaction_without_target_are_rejected() {
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::End, |_, _| {})
            .on::<OrderConfirmed>(S::End)
            .to(S::A, |_, _| {})
            .on::<OrderConfirmed>(S::A)
            .to(S::End, |_, _| {})
            .build(),
    );
    assert_eq!(
        p,
        "final state end on order.confirmed leads to a: a finished saga stays finished"
    );
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::End, |_, _| {})
            .on_timeout(S::End, "t")
            .to(S::End, |_| {})
            .build(),
    );
    assert!(p.starts_with("final state end reacts to timeout t"), "{p}");
    // Answering a late message and staying finished is allowed.
    assert!(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::End, |_, _| {})
            .on::<OrderConfirmed>(S::End)
            .to(S::End, |_, _| {})
            .build()
            .is_ok()
    );
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .to(S::End, |_, _| {})
            .on::<OrderConfirmed>(S::A)
            .choose([], |_, _| S::End)
            .build(),
    );
    assert_eq!(p, "a on order.confirmed leads to no state");
}

#[test]
fn derived_states_are_named_as_serde_names_them() {
    assert_eq!(
        Phase::ALL,
        [Phase::AwaitingPayment, Phase::SentOff, Phase::GaveUp]
    );
    for phase in Phase::ALL {
        let json = serde_json::to_value(phase).unwrap();
        assert_eq!(json.as_str(), Some(phase.name()), "{phase:?}");
    }
    assert_eq!(Phase::AwaitingPayment.name(), "awaiting-payment");
    assert_eq!(Phase::SentOff.name(), "shipped");
    assert!(!Phase::AwaitingPayment.is_final());
    assert!(Phase::SentOff.is_final() && Phase::GaveUp.is_final());
    assert_eq!(Phase::SentOff.outcome(), Outcome::Completed);
    assert_eq!(Phase::GaveUp.outcome(), Outcome::Failed);
    assert_eq!(S::Trap.name(), "trap");
}

#[test]
fn every_rule_names_its_kind() {
    let kind =
        |result: Result<Definition<(), S>, a4co_saga::DefinitionError>| result.unwrap_err().kind();
    let start = || builder().starts_with::<OrderCreated>().to(S::A, |_, _| {});
    let cases = [
        (
            Definition::<(), S>::builder("bad name", "svc")
                .starts_with::<OrderCreated>()
                .to(S::End, |_, _| {})
                .build(),
            DefinitionErrorKind::Name,
        ),
        (
            start()
                .version(0)
                .on::<OrderConfirmed>(S::A)
                .to(S::End, |_, _| {})
                .build(),
            DefinitionErrorKind::Version,
        ),
        (
            builder()
                .on::<OrderConfirmed>(S::A)
                .to(S::End, |_, _| {})
                .build(),
            DefinitionErrorKind::NoStart,
        ),
        (
            start()
                .on::<OrderConfirmed>(S::A)
                .to(S::End, |_, _| {})
                .on::<OrderConfirmed>(S::A)
                .to(S::End, |_, _| {})
                .build(),
            DefinitionErrorKind::Duplicate,
        ),
        (
            start()
                .on::<OrderConfirmed>(S::A)
                .choose([S::End], |_, _| S::End)
                .build(),
            DefinitionErrorKind::Targets,
        ),
        (
            start()
                .on::<OrderConfirmed>(S::A)
                .to(S::End, |_, _| {})
                .on_timeout(S::End, "t")
                .to(S::End, |_| {})
                .build(),
            DefinitionErrorKind::LeavesFinal,
        ),
        (start().build(), DefinitionErrorKind::Stuck),
    ];
    for (result, expected) in cases {
        assert_eq!(kind(result), expected);
    }
}

#[test]
fn a_choice_of_one_state_is_refused_saying_how_to_declare_it() {
    let p = problem(
        builder()
            .starts_with::<OrderCreated>()
            .choose([S::A], |_, _| S::A)
            .on::<OrderConfirmed>(S::A)
            .to(S::End, |_, _| {})
            .build(),
    );
    assert_eq!(
        p,
        "(start) on order.created chooses among one state: declare it with .to(a, ..), whose reaction returns nothing"
    );
}

#[tokio::test]
async fn a_reaction_that_breaks_its_definition_says_how() {
    use a4co_events::bus::MemoryBus;
    use a4co_events::catalog::inventory::ReserveStock;
    use a4co_events::{Envelope, Message as _};
    let strays = builder()
        .starts_with::<OrderCreated>()
        // Says it takes a or b, takes end.
        .choose([S::A, S::B], |_, _| S::End)
        .on::<OrderConfirmed>(S::A)
        .to(S::End, |_, _| {})
        .on::<OrderConfirmed>(S::B)
        .to(S::End, |_, _| {})
        .build()
        .unwrap();
    let reuses = builder()
        .starts_with::<OrderCreated>()
        .to(S::A, |step, _| {
            step.send("reserve", "prod-1", ReserveStock::example());
            step.send("reserve", "prod-2", ReserveStock::example());
        })
        .on::<OrderConfirmed>(S::A)
        .to(S::End, |_, _| {})
        .build()
        .unwrap();
    let created = Envelope::new("order-service", "ord-1", OrderCreated::example()).into_any();
    for (definition, expected) in [
        (strays, ReactionErrorKind::UndeclaredState),
        (reuses, ReactionErrorKind::StepReused),
    ] {
        let bus = MemoryBus::provisioned().await.unwrap();
        let store = a4co_saga::MemoryStore::new();
        let runtime = a4co_saga::Runtime::new(definition, bus, store.clone());
        let Err(RuntimeError::Reaction(error)) = runtime.handle(&created).await else {
            panic!("{expected:?}: the reaction is refused");
        };
        assert_eq!(error.kind(), expected, "{error}");
        assert_eq!(error.saga_id, "test-saga/ord-1");
        assert_eq!(store.len(), 0, "{expected:?}: nothing saved");
    }
}

#[test]
fn bad_names_are_rejected() {
    let p = Definition::<(), S>::builder("bad name", "svc")
        .starts_with::<OrderCreated>()
        .to(S::End, |_, _| {})
        .build()
        .unwrap_err()
        .problem;
    assert!(p.contains("must be non-empty"), "{p}");
}

#[tokio::test]
async fn a_step_sending_what_consumers_would_dead_letter_fails_and_sends_nothing() {
    use a4co_events::Message as _;
    use a4co_events::bus::MemoryBus;
    use a4co_events::catalog::inventory::ReserveStock;
    let definition = builder()
        .starts_with::<OrderCreated>()
        .to(S::A, |step, order| {
            // No aggregate: every consumer would dead-letter it.
            step.send("reserve", "", ReserveStock::example());
            let _ = order;
        })
        .on::<OrderConfirmed>(S::A)
        .to(S::End, |_, _| {})
        .build()
        .unwrap();
    let bus = MemoryBus::provisioned().await.unwrap();
    let store = a4co_saga::store::MemoryStore::new();
    let runtime = a4co_saga::Runtime::new(definition, bus.clone(), store.clone());
    let order = a4co_events::Envelope::new("order-service", "ord-1", OrderCreated::example());
    let error = runtime.handle(&order.into_any()).await.unwrap_err();
    assert!(
        matches!(&error, RuntimeError::Reaction(e) if e.kind() == ReactionErrorKind::Undeliverable),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("step \"reserve\"") && text.contains("every consumer would dead-letter"),
        "{text}"
    );
    assert!(text.contains("aggregateId"), "{text}");
    assert_eq!(store.len(), 0, "nothing saved, so nothing to send");
}
