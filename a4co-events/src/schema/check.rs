//! A JSON Schema check that reads a payload's JSON text once, without building a tree.
//!
//! Compiled from the same schema as the `jsonschema` validator, it handles what the
//! catalog's schemas use: objects (`properties`, `required`, `additionalProperties`),
//! arrays (`items`, `minItems`, `maxItems`), nullable references (`anyOf` of a schema and
//! `null`) and scalars, whose own rules (`minimum`, `pattern`, `format`, `enum`, ...) it
//! hands to a `jsonschema` validator of that scalar's schema. Anything else (`oneOf`,
//! `allOf`, ...) is checked by `jsonschema` on a tree of that part only.
//!
//! It may only err on the side of caution: when it passes a payload, `jsonschema` passes it
//! too (property-tested against it over every catalog message); when it does not, the
//! decoder asks `jsonschema` for the verdict and the violations.

use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Keywords that assert or apply subschemas (drafts 4 to 2020-12), beyond
/// [`SCALAR_RULES`]. Any other keyword is an annotation, for this check as for `jsonschema`.
const STRUCTURE_RULES: &[&str] = &[
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxContains",
    "minContains",
    "maxProperties",
    "minProperties",
    "required",
    "dependentRequired",
    "dependencies",
    "properties",
    "patternProperties",
    "additionalProperties",
    "propertyNames",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "unevaluatedItems",
    "unevaluatedProperties",
    "$ref",
    "$dynamicRef",
    "$recursiveRef",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
];

fn is_rule(keyword: &str) -> bool {
    SCALAR_RULES.contains(&keyword) || STRUCTURE_RULES.contains(&keyword)
}

/// The rules a scalar's own validator checks.
const SCALAR_RULES: &[&str] = &[
    "type",
    "enum",
    "const",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "format",
];

/// Deeper than this, a schema is checked as a tree (the catalog nests a few levels).
const MAX_DEPTH: usize = 32;

/// JSON types, as bits.
const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const OBJECT: u8 = 32;
const ARRAY: u8 = 64;

/// A compiled check of one message's payload.
pub(crate) struct Check {
    root: Node,
}

enum Node {
    /// Any JSON value.
    Any,
    /// A scalar of one of `types`, with its own rules checked by `rules`.
    Scalar {
        types: u8,
        rules: Option<Box<jsonschema::Validator>>,
    },
    Object(Box<Object>),
    Array(Box<Array>),
    /// `null`, or what the inner node accepts.
    Nullable(Box<Node>),
    /// Checked by `jsonschema` on a tree of this part.
    Tree(Box<jsonschema::Validator>),
}

struct Object {
    properties: Vec<(String, Node)>,
    /// Bit `i`: property `i` is required.
    required: u64,
    additional: bool,
}

struct Array {
    items: Node,
    min: u64,
    max: Option<u64>,
}

impl Check {
    /// Compiles `schema` (a message's payload schema, with its `$defs`).
    pub(crate) fn compile(schema: &Value) -> Check {
        let compiler = Compiler { root: schema };
        Check {
            root: compiler.node(schema, 0),
        }
    }

    /// Whether `json` certainly satisfies the schema; `false` means "ask `jsonschema`".
    pub(crate) fn passes(&self, json: &str) -> bool {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        Seed {
            node: &self.root,
            null_ok: false,
        }
        .deserialize(&mut deserializer)
        .is_ok()
            && deserializer.end().is_ok()
    }
}

struct Compiler<'a> {
    root: &'a Value,
}

impl Compiler<'_> {
    fn node(&self, schema: &Value, depth: usize) -> Node {
        let Some(object) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Node::Any,
                _ => self.tree(schema),
            };
        };
        if depth > MAX_DEPTH {
            return self.tree(schema);
        }
        let rules: Vec<&str> = object
            .keys()
            .map(String::as_str)
            .filter(|k| is_rule(k) || (k.starts_with('$') && !is_identifier(k)))
            .collect();
        if rules.is_empty() {
            return Node::Any;
        }
        if rules == ["$ref"] {
            return match self.resolve(&object["$ref"]) {
                Some(target) => self.node(target, depth + 1),
                None => self.tree(schema),
            };
        }
        if rules == ["anyOf"]
            && let Some([a, b]) = object["anyOf"].as_array().map(Vec::as_slice)
        {
            if is_null(b) {
                return Node::Nullable(Box::new(self.node(a, depth + 1)));
            }
            if is_null(a) {
                return Node::Nullable(Box::new(self.node(b, depth + 1)));
            }
        }
        let Some(types) = object.get("type").and_then(types) else {
            return self.tree(schema);
        };
        let only = |allowed: &[&str]| rules.iter().all(|r| allowed.contains(r));
        match types {
            OBJECT if only(&["type", "properties", "required", "additionalProperties"]) => self
                .object(schema, object, depth)
                .unwrap_or_else(|| self.tree(schema)),
            ARRAY if only(&["type", "items", "minItems", "maxItems"]) => self
                .array(object, depth)
                .unwrap_or_else(|| self.tree(schema)),
            t if t & (OBJECT | ARRAY) == 0 && only(SCALAR_RULES) => Node::Scalar {
                types,
                rules: if rules == ["type"] {
                    None
                } else {
                    match self.validator(object.clone()) {
                        Some(v) => Some(Box::new(v)),
                        None => return self.tree(schema),
                    }
                },
            },
            _ => self.tree(schema),
        }
    }

    fn object(&self, schema: &Value, object: &Map<String, Value>, depth: usize) -> Option<Node> {
        let properties: Vec<(String, Node)> = match object.get("properties") {
            None => Vec::new(),
            Some(p) => p
                .as_object()?
                .iter()
                .map(|(name, s)| (name.clone(), self.node(s, depth + 1)))
                .collect(),
        };
        if properties.len() > 64 {
            return None;
        }
        let additional = match object.get("additionalProperties") {
            None | Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => false,
            Some(_) => return None,
        };
        let mut required = 0u64;
        for name in object
            .get("required")
            .map_or(Some(&[][..]), |r| r.as_array().map(Vec::as_slice))?
        {
            match properties
                .iter()
                .position(|(p, _)| Some(p.as_str()) == name.as_str())
            {
                Some(i) => required |= 1 << i,
                // Required but not described: let jsonschema say.
                None => return Some(self.tree(schema)),
            }
        }
        Some(Node::Object(Box::new(Object {
            properties,
            required,
            additional,
        })))
    }

    fn array(&self, object: &Map<String, Value>, depth: usize) -> Option<Node> {
        let count = |k: &str| match object.get(k) {
            None => Some(None),
            Some(v) => v.as_u64().map(Some),
        };
        let items = match object.get("items") {
            None => Node::Any,
            Some(s) if s.is_object() || s.is_boolean() => self.node(s, depth + 1),
            Some(_) => return None,
        };
        Some(Node::Array(Box::new(Array {
            items,
            min: count("minItems")?.unwrap_or(0),
            max: count("maxItems")?,
        })))
    }

    /// `#/$defs/<name>` in the root schema.
    fn resolve(&self, reference: &Value) -> Option<&Value> {
        let name = reference.as_str()?.strip_prefix("#/$defs/")?;
        if name.contains(['/', '~', '%']) {
            return None;
        }
        self.root.get("$defs")?.get(name)
    }

    /// `jsonschema` on a tree of this part, with the root's draft and `$defs`.
    fn tree(&self, schema: &Value) -> Node {
        let mut part = match schema {
            Value::Object(o) => o.clone(),
            other => {
                let mut wrapped = Map::new();
                wrapped.insert("allOf".into(), Value::Array(vec![other.clone()]));
                wrapped
            }
        };
        if let Some(defs) = self.root.get("$defs") {
            part.insert("$defs".into(), defs.clone());
        }
        match self.validator(part) {
            Some(v) => Node::Tree(Box::new(v)),
            // Cannot happen for a schema the full validator compiled; never pass then.
            None => Node::Scalar {
                types: 0,
                rules: None,
            },
        }
    }

    fn validator(&self, mut schema: Map<String, Value>) -> Option<jsonschema::Validator> {
        schema.remove("$id");
        if let Some(draft) = self.root.get("$schema") {
            schema.insert("$schema".into(), draft.clone());
        }
        super::compile(&Value::Object(schema))
    }
}

fn is_identifier(keyword: &str) -> bool {
    matches!(
        keyword,
        "$defs" | "$id" | "$schema" | "$comment" | "definitions"
    )
}

fn is_null(schema: &Value) -> bool {
    schema.as_object().is_some_and(|o| {
        o.get("type").and_then(Value::as_str) == Some("null")
            && o.keys().all(|k| k == "type" || !is_rule(k))
            && !o.keys().any(|k| k.starts_with('$') && !is_identifier(k))
    })
}

fn types(value: &Value) -> Option<u8> {
    let one = |t: &Value| match t.as_str()? {
        "null" => Some(NULL),
        "boolean" => Some(BOOLEAN),
        "integer" => Some(INTEGER),
        "number" => Some(NUMBER),
        "string" => Some(STRING),
        "object" => Some(OBJECT),
        "array" => Some(ARRAY),
        _ => None,
    };
    match value {
        Value::Array(list) => list.iter().try_fold(0, |acc, t| Some(acc | one(t)?)),
        single => one(single),
    }
}

/// Checks one value against a node.
struct Seed<'n> {
    node: &'n Node,
    null_ok: bool,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.node {
            Node::Any => IgnoredAny::deserialize(deserializer).map(drop),
            Node::Nullable(inner) => Seed {
                node: inner,
                null_ok: true,
            }
            .deserialize(deserializer),
            Node::Tree(validator) => {
                let value = Value::deserialize(deserializer)?;
                if (self.null_ok && value.is_null()) || validator.is_valid(&value) {
                    Ok(())
                } else {
                    Err(fail())
                }
            }
            _ => deserializer.deserialize_any(self),
        }
    }
}

fn fail<E: de::Error>() -> E {
    E::custom("schema")
}

impl Seed<'_> {
    fn scalar<E: de::Error>(&self, kind: u8, value: impl FnOnce() -> Value) -> Result<(), E> {
        if kind == NULL && self.null_ok {
            return Ok(());
        }
        let Node::Scalar { types, rules } = self.node else {
            return Err(fail());
        };
        if types & kind == 0 {
            return Err(fail());
        }
        match rules {
            Some(rules) if !rules.is_valid(&value()) => Err(fail()),
            _ => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(BOOLEAN, || Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(INTEGER | NUMBER, || Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(INTEGER | NUMBER, || Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // jsonschema counts 1.0 as an integer; anything else with a fraction is a number.
        let kind = if v.fract() == 0.0 {
            INTEGER | NUMBER
        } else {
            NUMBER
        };
        self.scalar(kind, || Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(STRING, || Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(NULL, || Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Node::Object(object) = self.node else {
            return Err(fail());
        };
        let mut seen = 0u64;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let name = key.as_str();
            match object.properties.iter().position(|(p, _)| p == name) {
                Some(i) => {
                    seen |= 1 << i;
                    map.next_value_seed(Seed {
                        node: &object.properties[i].1,
                        null_ok: false,
                    })?;
                }
                None if object.additional => {
                    map.next_value::<IgnoredAny>()?;
                }
                None => return Err(fail()),
            }
        }
        if seen & object.required == object.required {
            Ok(())
        } else {
            Err(fail())
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Node::Array(array) = self.node else {
            return Err(fail());
        };
        let mut count = 0u64;
        while seq
            .next_element_seed(Seed {
                node: &array.items,
                null_ok: false,
            })?
            .is_some()
        {
            count += 1;
        }
        if count >= array.min && array.max.is_none_or(|max| count <= max) {
            Ok(())
        } else {
            Err(fail())
        }
    }
}

/// An object key, borrowed from the input when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::Check;
    use crate::{catalog, schema};

    /// Every value's JSON pointer in `value`, the root included.
    fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
        out.push(at.to_owned());
        match value {
            Value::Object(o) => {
                for (k, v) in o {
                    let key = k.replace('~', "~0").replace('/', "~1");
                    pointers(v, &format!("{at}/{key}"), out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    pointers(v, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    fn odd_values() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(true)),
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(1.0)),
            Just(json!(1.5)),
            Just(json!(-0.5)),
            Just(json!(1e300)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!("")),
            Just(json!("x")),
            Just(json!("EUR")),
            Just(json!("eur")),
            Just(json!("a@b.es")),
            Just(json!("not an email")),
            Just(json!("2026-01-15T10:00:00Z")),
            Just(json!("2026-01-15 10:00:00Z")),
            Just(json!("2026-13-40T99:00:00Z")),
            Just(json!("delivery")),
            Just(json!("pickup")),
            Just(json!([])),
            Just(json!([1])),
            Just(json!({})),
            Just(json!({"unknown": 1})),
            "[a-zA-Z0-9@.:-]{0,12}".prop_map(Value::String),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
        ]
    }

    /// One change: set the value at a pointer, drop it, or add a key beside it.
    #[derive(Clone, Debug)]
    enum Change {
        Set(usize, Value),
        Remove(usize),
        Add(usize, Value),
    }

    fn changes() -> impl Strategy<Value = Vec<Change>> {
        let change = prop_oneof![
            3 => (any::<usize>(), odd_values()).prop_map(|(i, v)| Change::Set(i, v)),
            1 => any::<usize>().prop_map(Change::Remove),
            1 => (any::<usize>(), odd_values()).prop_map(|(i, v)| Change::Add(i, v)),
        ];
        prop::collection::vec(change, 1..4)
    }

    fn apply(payload: &mut Value, change: &Change) {
        let mut all = Vec::new();
        pointers(payload, "", &mut all);
        let pick = |i: usize| all[i % all.len()].clone();
        match change {
            Change::Set(i, v) => {
                let at = pick(*i);
                if at.is_empty() {
                    *payload = v.clone();
                } else if let Some(slot) = payload.pointer_mut(&at) {
                    *slot = v.clone();
                }
            }
            Change::Remove(i) => {
                let at = pick(*i);
                if let Some((parent, key)) = at.rsplit_once('/') {
                    match payload.pointer_mut(parent) {
                        Some(Value::Object(o)) => {
                            o.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                        Some(Value::Array(a)) => {
                            if let Ok(i) = key.parse::<usize>()
                                && i < a.len()
                            {
                                a.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Change::Add(i, v) => {
                if let Some(Value::Object(o)) = payload.pointer_mut(&pick(*i)) {
                    o.insert("extra".into(), v.clone());
                }
            }
        }
    }

    struct Compiled {
        check: Check,
        full: jsonschema::Validator,
        example: Value,
        name: String,
    }

    fn compiled() -> &'static [Compiled] {
        static ALL: std::sync::OnceLock<Vec<Compiled>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            catalog::MESSAGES
                .iter()
                .map(|info| {
                    let schema = schema::message_schema(info);
                    Compiled {
                        check: Check::compile(&schema),
                        full: crate::schema::compile(&schema).unwrap(),
                        example: info.example(),
                        name: format!("{} v{}", info.type_name, info.version),
                    }
                })
                .collect()
        })
    }

    #[test]
    fn every_catalog_example_passes_without_a_tree() {
        for c in compiled() {
            let text = c.example.to_string();
            assert!(c.full.is_valid(&c.example), "{}", c.name);
            assert!(c.check.passes(&text), "{}: {text}", c.name);
        }
    }

    #[test]
    fn what_is_not_json_or_not_one_value_never_passes() {
        let c = &compiled()[0];
        for text in ["", "{", "{} {}", "nul", "{\"a\":}", "[1,]"] {
            assert!(!c.check.passes(text), "{text:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The check passes nothing the full validator rejects, whatever the change.
        #[test]
        fn passing_the_check_means_passing_the_schema(which in any::<usize>(), changes in changes()) {
            let all = compiled();
            let c = &all[which % all.len()];
            let mut payload = c.example.clone();
            for change in &changes {
                apply(&mut payload, change);
            }
            let text = payload.to_string();
            if c.check.passes(&text) {
                prop_assert!(c.full.is_valid(&payload), "{}: passed {text}", c.name);
            }
        }
    }
}
