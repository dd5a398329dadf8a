//! Evolution checks: each breaking case is caught, additive changes pass.

use std::path::PathBuf;

use a4co_events::catalog::{self, MESSAGES};
use a4co_events::contract::evolution::{ChangeKind, compare, is_breaking};
use a4co_events::contract::{self, FindingKind, WriteError};
use a4co_events::schema;
use serde_json::{Value, json};

/// A published schema in the shape schemars generates: an order with lines, money in
/// `$defs`, an enum and a tagged union.
fn published() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "order.sample v1",
        "description": "A sample.",
        "type": "object",
        "x-a4co": {"subject": "order.sample", "stream": "ORDERS", "kind": "event", "type": "order.sample"},
        "properties": {
            "customerId": {"type": "string", "description": "Who."},
            "quantity": {"type": "integer", "format": "uint32", "minimum": 1},
            "note": {"type": ["string", "null"]},
            "status": {"$ref": "#/$defs/Status"},
            "total": {"$ref": "#/$defs/Money"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "fulfillment": {"$ref": "#/$defs/Fulfillment"},
            "address": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]}
        },
        "required": ["customerId", "quantity", "status", "total", "lines", "fulfillment"],
        "$defs": {
            "Status": {"type": "string", "enum": ["pending", "confirmed"]},
            "Money": {"type": "object", "properties": {"amountMinor": {"type": "integer", "format": "int64"}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["amountMinor", "currency"]},
            "Line": {"type": "object", "properties": {"productId": {"type": "string"}, "quantity": {"type": "integer"}}, "required": ["productId", "quantity"]},
            "Address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "Fulfillment": {"oneOf": [
                {"type": "object", "properties": {"method": {"type": "string", "const": "delivery"}, "city": {"type": "string"}}, "required": ["method", "city"]},
                {"type": "object", "properties": {"method": {"type": "string", "const": "pickup"}}, "required": ["method"]}
            ]}
        },
        "examples": [{"customerId": "c", "quantity": 1, "status": "pending"}]
    })
}

/// Applies `edit` to a copy of the published schema and compares.
fn changed(edit: impl FnOnce(&mut Value)) -> Vec<a4co_events::contract::evolution::Change> {
    let old = published();
    let mut new = old.clone();
    edit(&mut new);
    compare(&old, &new)
}

fn only(kind: ChangeKind, path: &str, changes: &[a4co_events::contract::evolution::Change]) {
    assert!(
        changes.iter().any(|c| c.kind == kind && c.path == path),
        "expected {kind:?} at {path:?}, got {changes:#?}"
    );
}

fn remove(v: &mut Value, pointer: &str, key: &str) {
    v.pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key);
}

#[test]
fn identical_schemas_have_no_changes() {
    assert!(compare(&published(), &published()).is_empty());
    for info in MESSAGES {
        let s = schema::message_schema(info);
        assert!(compare(&s, &s).is_empty(), "{}", info.type_name);
    }
}

#[test]
fn a_removed_field_breaks() {
    let c = changed(|s| remove(s, "/properties", "customerId"));
    only(ChangeKind::FieldRemoved, "customerId", &c);
    assert!(is_breaking(&c));
    // Even an optional one: consumers that read it lose it.
    let c = changed(|s| remove(s, "/properties", "note"));
    only(ChangeKind::FieldRemoved, "note", &c);
    assert!(is_breaking(&c));
}

#[test]
fn a_renamed_field_breaks_as_a_removal_plus_an_addition() {
    let c = changed(|s| {
        let field = s["properties"]["customerId"].take();
        remove(s, "/properties", "customerId");
        s["properties"]["clientId"] = field;
        s["required"][0] = json!("clientId");
    });
    only(ChangeKind::FieldRemoved, "customerId", &c);
    only(ChangeKind::RequiredFieldAdded, "clientId", &c);
}

#[test]
fn a_changed_type_breaks() {
    let c = changed(|s| s["properties"]["quantity"]["type"] = json!("string"));
    only(ChangeKind::TypeChanged, "quantity", &c);
    // Nullability is part of the type, both ways.
    let c = changed(|s| s["properties"]["customerId"]["type"] = json!(["string", "null"]));
    only(ChangeKind::TypeChanged, "customerId", &c);
    let c = changed(|s| s["properties"]["note"]["type"] = json!("string"));
    only(ChangeKind::TypeChanged, "note", &c);
    assert!(is_breaking(&c));
}

#[test]
fn a_new_required_field_breaks_and_a_new_optional_one_does_not() {
    let c = changed(|s| {
        s["properties"]["channel"] = json!({"type": "string"});
        s["required"].as_array_mut().unwrap().push(json!("channel"));
    });
    only(ChangeKind::RequiredFieldAdded, "channel", &c);
    assert!(is_breaking(&c));

    let c = changed(|s| s["properties"]["channel"] = json!({"type": ["string", "null"]}));
    only(ChangeKind::OptionalFieldAdded, "channel", &c);
    assert!(!is_breaking(&c), "{c:#?}");
    // Also deep inside a definition.
    let c = changed(|s| s["$defs"]["Line"]["properties"]["giftWrap"] = json!({"type": "boolean"}));
    only(ChangeKind::OptionalFieldAdded, "lines[].giftWrap", &c);
    assert!(!is_breaking(&c));
}

#[test]
fn making_a_field_required_or_optional_breaks() {
    let c = changed(|s| s["required"].as_array_mut().unwrap().push(json!("note")));
    only(ChangeKind::FieldMadeRequired, "note", &c);
    let c = changed(|s| {
        s["required"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r != "quantity");
    });
    only(ChangeKind::FieldMadeOptional, "quantity", &c);
    assert!(is_breaking(&c));
}

#[test]
fn narrowing_or_widening_an_enum_breaks() {
    let c = changed(|s| s["$defs"]["Status"]["enum"] = json!(["pending"]));
    only(ChangeKind::EnumNarrowed, "status", &c);
    let c = changed(|s| s["$defs"]["Status"]["enum"] = json!(["pending", "confirmed", "on-hold"]));
    only(ChangeKind::EnumWidened, "status", &c);
    assert!(is_breaking(&c));
}

#[test]
fn changed_formats_bounds_and_patterns_break() {
    let c = changed(|s| s["properties"]["quantity"]["format"] = json!("uint64"));
    only(ChangeKind::FormatChanged, "quantity", &c);
    let c = changed(|s| s["properties"]["quantity"]["minimum"] = json!(0));
    only(ChangeKind::ConstraintChanged, "quantity", &c);
    let c = changed(|s| {
        s["$defs"]["Money"]["properties"]["currency"]["pattern"] = json!("^[A-Za-z]{3}$");
    });
    only(ChangeKind::ConstraintChanged, "total.currency", &c);
    assert!(is_breaking(&c));
}

#[test]
fn changes_inside_definitions_and_array_items_are_found_by_path() {
    let c = changed(|s| s["$defs"]["Money"]["properties"]["amountMinor"]["type"] = json!("number"));
    only(ChangeKind::TypeChanged, "total.amountMinor", &c);
    let c = changed(|s| remove(s, "/$defs/Line/properties", "quantity"));
    only(ChangeKind::FieldRemoved, "lines[].quantity", &c);
    let c = changed(|s| s["properties"]["lines"]["items"] = json!({"type": "string"}));
    assert!(
        c.iter()
            .any(|c| c.path == "lines[]" && c.kind == ChangeKind::TypeChanged),
        "{c:#?}"
    );
}

#[test]
fn adding_or_removing_a_union_variant_breaks() {
    let c = changed(|s| {
        s["$defs"]["Fulfillment"]["oneOf"].as_array_mut().unwrap().push(json!(
            {"type": "object", "properties": {"method": {"type": "string", "const": "locker"}}, "required": ["method"]}
        ));
    });
    only(ChangeKind::VariantAdded, "fulfillment", &c);
    let c = changed(|s| {
        s["$defs"]["Fulfillment"]["oneOf"]
            .as_array_mut()
            .unwrap()
            .remove(1);
    });
    only(ChangeKind::VariantRemoved, "fulfillment", &c);
    // A change inside a variant is found in it.
    let c = changed(|s| {
        s["$defs"]["Fulfillment"]["oneOf"][0]["properties"]["city"]["type"] = json!("integer");
    });
    only(
        ChangeKind::TypeChanged,
        "fulfillment<method=delivery>.city",
        &c,
    );
    // An optional struct made required loses its `null` variant.
    let c = changed(|s| s["properties"]["address"] = json!({"$ref": "#/$defs/Address"}));
    assert!(
        c.iter()
            .any(|c| c.kind == ChangeKind::VariantRemoved && c.path == "address"),
        "{c:#?}"
    );
    assert!(is_breaking(&c));
}

#[test]
fn forbidding_unknown_fields_breaks() {
    let c = changed(|s| s["additionalProperties"] = json!(false));
    only(ChangeKind::AdditionalFieldsChanged, "", &c);
    assert!(is_breaking(&c));
}

#[test]
fn moving_a_message_to_another_subject_or_stream_breaks() {
    let c = changed(|s| s["x-a4co"]["subject"] = json!("orders.sample"));
    only(ChangeKind::RoutingChanged, "", &c);
    let c = changed(|s| s["x-a4co"]["stream"] = json!("OTHER"));
    only(ChangeKind::RoutingChanged, "", &c);
}

#[test]
fn documentation_changes_are_compatible() {
    let c = changed(|s| {
        s["description"] = json!("A better sample.");
        s["properties"]["customerId"]["description"] = json!("The customer.");
        s["examples"] = json!([]);
    });
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0].kind, ChangeKind::DocumentationChanged);
    assert!(!is_breaking(&c));
}

#[test]
fn an_unclassified_structural_change_is_assumed_breaking() {
    let c = changed(|s| s["properties"]["quantity"]["not"] = json!({"const": 13}));
    assert!(is_breaking(&c), "{c:#?}");
}

#[test]
fn the_two_versions_of_order_created_differ_incompatibly() {
    let v1 = schema::message_schema(catalog::find("order.created", 1).unwrap());
    let v2 = schema::message_schema(catalog::find("order.created", 2).unwrap());
    let c = compare(&v1, &v2);
    only(ChangeKind::FieldRemoved, "orderType", &c);
    only(ChangeKind::RequiredFieldAdded, "fulfillment", &c);
    only(ChangeKind::OptionalFieldAdded, "paymentMethodId", &c);
}

/// A generated catalog in a fresh temporary folder, removed on drop.
struct TempCatalog(PathBuf);

impl TempCatalog {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("a4co-catalog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        contract::write(&dir, false).unwrap();
        TempCatalog(dir)
    }
    fn edit_json(&self, path: &str, edit: impl FnOnce(&mut Value)) {
        let file = self.0.join(path);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(file, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
}

impl Drop for TempCatalog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const V2: &str = "schemas/order.created/v2.schema.json";

#[test]
fn check_is_clean_right_after_generate() {
    let cat = TempCatalog::new("clean");
    let report = contract::check(&cat.0).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn check_catches_a_published_field_the_code_dropped_and_generate_refuses() {
    let cat = TempCatalog::new("dropped");
    // The published v2 had a required field the code no longer has.
    cat.edit_json(V2, |s| {
        s["properties"]["giftMessage"] = json!({"type": "string"});
        s["required"]
            .as_array_mut()
            .unwrap()
            .push(json!("giftMessage"));
    });
    let report = contract::check(&cat.0).unwrap();
    assert!(report.is_breaking(), "{report}");
    let finding = report.findings.iter().find(|f| f.path == V2).unwrap();
    assert_eq!(finding.kind, FindingKind::Breaking);
    assert!(
        finding
            .changes
            .iter()
            .any(|c| c.kind == ChangeKind::FieldRemoved && c.path == "giftMessage")
    );
    assert!(report.to_string().contains("add a new version"), "{report}");

    let before = std::fs::read_to_string(cat.0.join(V2)).unwrap();
    assert!(matches!(
        contract::write(&cat.0, false),
        Err(WriteError::Breaking(_))
    ));
    assert_eq!(
        std::fs::read_to_string(cat.0.join(V2)).unwrap(),
        before,
        "nothing written"
    );
    contract::write(&cat.0, true).unwrap();
    assert!(contract::check(&cat.0).unwrap().is_clean());
}

#[test]
fn check_lets_a_new_optional_field_through_as_out_of_date() {
    let cat = TempCatalog::new("additive");
    // The published v2 lacked `paymentMethodId`: the code added an optional field.
    cat.edit_json(V2, |s| {
        s["properties"]
            .as_object_mut()
            .unwrap()
            .remove("paymentMethodId");
        s["examples"][0]
            .as_object_mut()
            .unwrap()
            .remove("paymentMethodId");
    });
    let report = contract::check(&cat.0).unwrap();
    assert!(!report.is_clean() && !report.is_breaking(), "{report}");
    assert_eq!(report.findings[0].kind, FindingKind::OutOfDate);
    assert!(
        report.to_string().contains("run `a4co catalog generate`"),
        "{report}"
    );
    contract::write(&cat.0, false).unwrap();
    assert!(contract::check(&cat.0).unwrap().is_clean());
}

#[test]
fn check_catches_a_narrowed_enum_in_a_published_version() {
    let cat = TempCatalog::new("enum");
    cat.edit_json("schemas/order.cancelled/v1.schema.json", |s| {
        // The published version allowed `fraud`; the code no longer does.
        let values = s["$defs"]["CancellationReason"]["enum"]
            .as_array_mut()
            .unwrap();
        values.push(json!("fraud"));
    });
    let report = contract::check(&cat.0).unwrap();
    assert!(report.is_breaking(), "{report}");
    let finding = &report.findings[0];
    assert!(
        finding
            .changes
            .iter()
            .any(|c| c.kind == ChangeKind::EnumNarrowed && c.path == "reason"),
        "{report}"
    );
}

#[test]
fn check_reports_missing_stray_and_removed_files() {
    let cat = TempCatalog::new("files");
    std::fs::remove_file(cat.0.join("schemas/notification.sent/v1.schema.json")).unwrap();
    std::fs::write(cat.0.join("notes.txt"), "hello").unwrap();
    std::fs::create_dir_all(cat.0.join("schemas/order.refunded")).unwrap();
    std::fs::write(cat.0.join("schemas/order.refunded/v1.schema.json"), "{}").unwrap();
    std::fs::write(cat.0.join("README.md"), "edited by hand").unwrap();
    let report = contract::check(&cat.0).unwrap();
    let kind = |p: &str| report.findings.iter().find(|f| f.path == p).map(|f| f.kind);
    assert_eq!(
        kind("schemas/notification.sent/v1.schema.json"),
        Some(FindingKind::Missing)
    );
    assert_eq!(kind("notes.txt"), Some(FindingKind::Stray));
    assert_eq!(
        kind("schemas/order.refunded/v1.schema.json"),
        Some(FindingKind::Breaking),
        "a published version vanished"
    );
    assert_eq!(kind("README.md"), Some(FindingKind::OutOfDate));
    assert_eq!(report.findings.len(), 4, "{report}");
}
