//! Definitions: what build() rejects, and the diagram.

use a4co_events::catalog::order::{OrderConfirmed, OrderCreated};
use a4co_saga::{Definition, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
enum S {
    A,
    B,
    Trap,
    End,
}

impl State for S {
    const ALL: &'static [Self] = &[S::A, S::B, S::Trap, S::End];
    fn name(self) -> &'static str {
        match self {
            S::A => "a",
            S::B => "b",
            S::Trap => "trap",
            S::End => "end",
        }
    }
    fn is_final(self) -> bool {
        self == S::End
    }
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
        .starts_with::<OrderCreated>(&[S::A], |_, _| S::A)
        .on::<OrderConfirmed>(S::A, &[S::End], |_, _| S::End)
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
            .on::<OrderConfirmed>(S::A, &[S::End], |_, _| S::End)
            .build(),
    );
    assert!(p.contains("no message starts it"), "{p}");
}

#[test]
fn reacting_twice_to_one_message_in_one_state_is_rejected() {
    let p = problem(
        builder()
            .starts_with::<OrderCreated>(&[S::A], |_, _| S::A)
            .on::<OrderConfirmed>(S::A, &[S::End], |_, _| S::End)
            .on::<OrderConfirmed>(S::A, &[S::B], |_, _| S::B)
            .on::<OrderConfirmed>(S::B, &[S::End], |_, _| S::End)
            .build(),
    );
    assert_eq!(p, "state a reacts twice to order.confirmed");
    let p = problem(
        builder()
            .starts_with::<OrderCreated>(&[S::A], |_, _| S::A)
            .on_timeout(S::A, "t", &[S::End], |_| S::End)
            .on_timeout(S::A, "t", &[S::End], |_| S::End)
            .build(),
    );
    assert_eq!(p, "state a reacts twice to timeout t");
}

#[test]
fn a_state_that_can_never_finish_is_rejected() {
    // a -> trap, and trap only loops on itself.
    let p = problem(
        builder()
            .starts_with::<OrderCreated>(&[S::A], |_, _| S::A)
            .on::<OrderConfirmed>(S::A, &[S::Trap, S::End], |_, _| S::End)
            .on_timeout(S::Trap, "again", &[S::Trap], |_| S::Trap)
            .build(),
    );
    assert!(
        p.starts_with("state trap can never reach a final state"),
        "{p}"
    );
    // A start state with no way out at all.
    let p = problem(
        builder()
            .starts_with::<OrderCreated>(&[S::A], |_, _| S::A)
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
            .starts_with::<OrderCreated>(&[S::End], |_, _| S::End)
            .on::<OrderConfirmed>(S::End, &[S::A], |_, _| S::A)
            .on::<OrderConfirmed>(S::A, &[S::End], |_, _| S::End)
            .build(),
    );
    assert_eq!(
        p,
        "final state end on order.confirmed leads to a: a finished saga stays finished"
    );
    let p = problem(
        builder()
            .starts_with::<OrderCreated>(&[S::End], |_, _| S::End)
            .on_timeout(S::End, "t", &[S::End], |_| S::End)
            .build(),
    );
    assert!(p.starts_with("final state end reacts to timeout t"), "{p}");
    // Answering a late message and staying finished is allowed.
    assert!(
        builder()
            .starts_with::<OrderCreated>(&[S::End], |_, _| S::End)
            .on::<OrderConfirmed>(S::End, &[S::End], |_, _| S::End)
            .build()
            .is_ok()
    );
    let p = problem(
        builder()
            .starts_with::<OrderCreated>(&[S::End], |_, _| S::End)
            .on::<OrderConfirmed>(S::A, &[], |_, _| S::End)
            .build(),
    );
    assert_eq!(p, "a on order.confirmed leads to no state");
}

#[test]
fn bad_names_are_rejected() {
    let p = Definition::<(), S>::builder("bad name", "svc")
        .starts_with::<OrderCreated>(&[S::End], |_, _| S::End)
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
        .starts_with::<OrderCreated>(&[S::A], |step, order| {
            // No aggregate: every consumer would dead-letter it.
            step.send("reserve", "", ReserveStock::example());
            let _ = order;
            S::A
        })
        .on::<OrderConfirmed>(S::A, &[S::End], |_, _| S::End)
        .build()
        .unwrap();
    let bus = MemoryBus::provisioned().await.unwrap();
    let store = a4co_saga::store::MemoryStore::new();
    let runtime = a4co_saga::Runtime::new(definition, bus.clone(), store.clone());
    let order = a4co_events::Envelope::new("order-service", "ord-1", OrderCreated::example());
    let error = runtime.handle(&order.into_any()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("step \"reserve\"") && text.contains("every consumer would dead-letter"),
        "{text}"
    );
    assert!(text.contains("aggregateId"), "{text}");
    assert_eq!(store.len(), 0, "nothing saved, so nothing to send");
}
