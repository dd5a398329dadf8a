//! The compiled validators the decoder runs: one per message version (a check over JSON text,
//! backed by the full `jsonschema` validator) and one for the envelope. Built on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::check::Check;
use crate::catalog;
use crate::error::{MAX_VIOLATIONS, Violation, clip};

/// A payload schema, twice: the check over JSON text, and the full validator.
pub(crate) struct PayloadSchema {
    /// Passes valid payloads without building a tree; `false` means "ask `full`".
    pub(crate) check: Check,
    /// The verdict and the violations.
    pub(crate) full: jsonschema::Validator,
}

type Schemas = HashMap<(&'static str, u32), PayloadSchema>;

/// The schema of one (type, version) of the catalog; `None` for one the catalog lacks.
pub(crate) fn payload(event_type: &str, version: u32) -> Option<&PayloadSchema> {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            catalog::MESSAGES
                .iter()
                .filter_map(|info| {
                    let schema = super::message_schema(info);
                    let full = super::compile(&schema)?;
                    let check = Check::compile(&schema);
                    Some((
                        (info.type_name, info.version),
                        PayloadSchema { check, full },
                    ))
                })
                .collect()
        })
        .get(&(event_type, version))
}

/// The envelope's validator. `None` only if the generated envelope schema failed to compile,
/// which the test suite rules out; serde's checks then still apply.
pub(crate) fn envelope() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| super::compile(&super::envelope_schema()))
        .as_ref()
}

/// The first [`MAX_VIOLATIONS`] errors as violations, their paths under `prefix`.
pub(crate) fn violations<'a>(
    errors: impl Iterator<Item = jsonschema::ValidationError<'a>>,
    prefix: &str,
) -> Vec<Violation> {
    errors
        .take(MAX_VIOLATIONS)
        .map(|e| {
            let pointer = e.instance_path().as_str();
            let path = match (prefix, pointer) {
                ("", "") => "/".to_owned(),
                (p, i) => format!("{p}{i}"),
            };
            Violation {
                path,
                rule: e.kind().keyword().to_owned(),
                message: clip(&e.to_string()),
            }
        })
        .collect()
}
