//! Evolution checks: what changed between two schemas of the same message version, and
//! whether it breaks anyone.
//!
//! A published version has readers on both sides of every deploy: consumers built against
//! the old schema read what new producers send, and consumers built against the new schema
//! read what old producers sent (and what the streams still hold, for up to a year). So a
//! change to a published version is compatible only if both directions still work. With
//! tolerant readers (unknown fields are ignored) that leaves:
//!
//! - compatible: a new **optional** field; documentation (`title`, `description`,
//!   `examples`, ...).
//! - breaking: a field removed or renamed; a new required field; a field made required or
//!   optional; a type changed (nullability included); an enum narrowed **or widened** (an old
//!   consumer cannot parse a value it never heard of); a `const`, `format`, bound, length or
//!   pattern changed; a variant of a union added or removed; unknown fields forbidden or a
//!   ban lifted; the subject, stream or kind changed.
//!
//! To make a breaking change, add a new version and an [`Upcast`](crate::Upcast) from the
//! old one: both versions stay in the catalog.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A field that existed is gone (a rename shows as this plus an added field).
    FieldRemoved,
    /// A new field that producers must send: stored old messages lack it.
    RequiredFieldAdded,
    /// A new optional field: compatible.
    OptionalFieldAdded,
    /// An optional field became required: stored old messages may lack it.
    FieldMadeRequired,
    /// A required field became optional: old consumers rely on it.
    FieldMadeOptional,
    /// The JSON type changed, `null` included.
    TypeChanged,
    /// Enum values removed: stored old messages may hold them.
    EnumNarrowed,
    /// Enum values added: old consumers cannot parse them.
    EnumWidened,
    /// A `const` changed.
    ConstChanged,
    /// A `format` was added, removed or changed.
    FormatChanged,
    /// A bound, length, pattern or similar constraint changed.
    ConstraintChanged,
    /// A union lost a variant.
    VariantRemoved,
    /// A union gained a variant.
    VariantAdded,
    /// Unknown fields were forbidden, or a ban was lifted.
    AdditionalFieldsChanged,
    /// The subject, stream or kind of the message changed.
    RoutingChanged,
    /// Only documentation changed: compatible.
    DocumentationChanged,
}

impl ChangeKind {
    /// Whether the change breaks an existing producer or consumer.
    pub fn is_breaking(self) -> bool {
        !matches!(
            self,
            ChangeKind::OptionalFieldAdded | ChangeKind::DocumentationChanged
        )
    }

    /// A stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::FieldRemoved => "field_removed",
            ChangeKind::RequiredFieldAdded => "required_field_added",
            ChangeKind::OptionalFieldAdded => "optional_field_added",
            ChangeKind::FieldMadeRequired => "field_made_required",
            ChangeKind::FieldMadeOptional => "field_made_optional",
            ChangeKind::TypeChanged => "type_changed",
            ChangeKind::EnumNarrowed => "enum_narrowed",
            ChangeKind::EnumWidened => "enum_widened",
            ChangeKind::ConstChanged => "const_changed",
            ChangeKind::FormatChanged => "format_changed",
            ChangeKind::ConstraintChanged => "constraint_changed",
            ChangeKind::VariantRemoved => "variant_removed",
            ChangeKind::VariantAdded => "variant_added",
            ChangeKind::AdditionalFieldsChanged => "additional_fields_changed",
            ChangeKind::RoutingChanged => "routing_changed",
            ChangeKind::DocumentationChanged => "documentation_changed",
        }
    }
}

/// One difference between two schemas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Where: a field path such as `items[].unitPrice.amountMinor` (empty for the root).
    pub path: String,
    /// What kind of change.
    pub kind: ChangeKind,
    /// What exactly, in words.
    pub detail: String,
}

impl Change {
    /// Whether it breaks an existing producer or consumer.
    pub fn is_breaking(&self) -> bool {
        self.kind.is_breaking()
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.is_breaking() {
            "breaking"
        } else {
            "compatible"
        };
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(
            f,
            "{verdict} {}: {path}: {}",
            self.kind.as_str(),
            self.detail
        )
    }
}

/// Compares the published schema of a message version (`old`) with the code's (`new`).
/// Returns every difference found, breaking or not; an empty list means the contracts are
/// the same.
pub fn compare(old: &Value, new: &Value) -> Vec<Change> {
    // The same normal form the catalog publishes (documented enums as `enum`), so two
    // renderings of one contract compare equal.
    let (mut old_normal, mut new_normal) = (old.clone(), new.clone());
    crate::schema::plain_enums(&mut old_normal);
    crate::schema::plain_enums(&mut new_normal);
    let (old, new) = (&old_normal, &new_normal);
    let mut walker = Walker {
        old_root: old,
        new_root: new,
        changes: Vec::new(),
        seen: HashSet::new(),
    };
    walker.routing(old, new);
    walker.node(old, new, "");
    if walker.changes.is_empty() && old != new {
        if strip_docs(old) == strip_docs(new) {
            walker.push(
                "",
                ChangeKind::DocumentationChanged,
                "titles, descriptions or examples changed",
            );
        } else {
            // A difference the rules above do not classify: assume the worst.
            walker.push(
                "",
                ChangeKind::ConstraintChanged,
                "schema changed in a way the checker does not classify",
            );
        }
    }
    walker.changes
}

/// Whether any of the changes breaks an existing producer or consumer.
pub fn is_breaking(changes: &[Change]) -> bool {
    changes.iter().any(Change::is_breaking)
}

/// Keywords that constrain values; any change to them breaks one side or the other.
const CONSTRAINTS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "contains",
];

/// Keywords that only document.
const DOCS: &[&str] = &[
    "title",
    "description",
    "examples",
    "default",
    "$comment",
    "deprecated",
];

struct Walker<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    changes: Vec<Change>,
    seen: HashSet<(String, String)>,
}

impl<'a> Walker<'a> {
    fn push(&mut self, path: &str, kind: ChangeKind, detail: impl Into<String>) {
        self.changes.push(Change {
            path: path.to_owned(),
            kind,
            detail: detail.into(),
        });
    }

    fn routing(&mut self, old: &Value, new: &Value) {
        for key in ["subject", "stream", "kind", "type"] {
            let (o, n) = (
                old.pointer(&format!("/x-a4co/{key}")),
                new.pointer(&format!("/x-a4co/{key}")),
            );
            if o.is_some() && o != n {
                let detail = format!("{key} changed from {} to {}", show(o), show(n));
                self.push("", ChangeKind::RoutingChanged, detail);
            }
        }
    }

    /// Follows a local `$ref` (`#/$defs/Name`); anything else is returned as is.
    fn resolve(&self, node: &'a Value, root: &'a Value) -> (&'a Value, Option<String>) {
        let mut node = node;
        let mut via = None;
        for _ in 0..32 {
            match node.get("$ref").and_then(Value::as_str) {
                Some(r) if r.starts_with('#') => match root.pointer(&r[1..]) {
                    Some(target) => {
                        via = Some(r.to_owned());
                        node = target;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        (node, via)
    }

    fn node(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let (old, old_ref) = self.resolve(old, self.old_root);
        let (new, new_ref) = self.resolve(new, self.new_root);
        if let (Some(o), Some(n)) = (&old_ref, &new_ref) {
            // Recursive types: compare each pair of definitions once.
            if !self.seen.insert((format!("{path}|{o}"), n.clone())) {
                return;
            }
        }
        let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
            if old != new {
                let detail = format!(
                    "schema changed from {} to {}",
                    show(Some(old)),
                    show(Some(new))
                );
                self.push(path, ChangeKind::TypeChanged, detail);
            }
            return;
        };

        if union_of(o).is_some() || union_of(n).is_some() {
            self.union(old, new, path);
            return;
        }
        self.types(o, n, path);
        self.enums(o, n, path);
        for (key, kind) in [
            ("const", ChangeKind::ConstChanged),
            ("format", ChangeKind::FormatChanged),
        ] {
            if o.get(key) != n.get(key) {
                let detail = format!(
                    "{key} changed from {} to {}",
                    show(o.get(key)),
                    show(n.get(key))
                );
                self.push(path, kind, detail);
            }
        }
        for key in CONSTRAINTS {
            if o.get(*key) != n.get(*key) {
                let detail = format!(
                    "{key} changed from {} to {}",
                    show(o.get(*key)),
                    show(n.get(*key))
                );
                self.push(path, ChangeKind::ConstraintChanged, detail);
            }
        }
        self.properties(o, n, path);
        match (o.get("items"), n.get("items")) {
            (Some(oi), Some(ni)) => self.node(oi, ni, &format!("{path}[]")),
            (None, None) => {}
            (oi, ni) => {
                let detail = format!("items changed from {} to {}", show(oi), show(ni));
                self.push(path, ChangeKind::TypeChanged, detail);
            }
        }
    }

    fn types(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str) {
        let (ot, nt) = (type_set(o), type_set(n));
        if ot != nt {
            let detail = format!("type changed from {} to {}", show_set(&ot), show_set(&nt));
            self.push(path, ChangeKind::TypeChanged, detail);
        }
    }

    fn enums(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str) {
        let values = |m: &Map<String, Value>| -> Option<BTreeSet<String>> {
            m.get("enum")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Value::to_string).collect())
        };
        match (values(o), values(n)) {
            (Some(ov), Some(nv)) => {
                let removed: Vec<_> = ov.difference(&nv).cloned().collect();
                let added: Vec<_> = nv.difference(&ov).cloned().collect();
                if !removed.is_empty() {
                    let detail = format!("enum values removed: {}", removed.join(", "));
                    self.push(path, ChangeKind::EnumNarrowed, detail);
                }
                if !added.is_empty() {
                    let detail = format!("enum values added: {}", added.join(", "));
                    self.push(path, ChangeKind::EnumWidened, detail);
                }
            }
            (None, None) => {}
            (Some(_), None) => self.push(path, ChangeKind::EnumWidened, "enum restriction lifted"),
            (None, Some(_)) => self.push(path, ChangeKind::EnumNarrowed, "enum restriction added"),
        }
    }

    fn properties(&mut self, o: &'a Map<String, Value>, n: &'a Map<String, Value>, path: &str) {
        static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        let op = o
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let np = n
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&EMPTY);
        let (oreq, nreq) = (required(o), required(n));
        let field = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };

        for (name, old_schema) in op {
            let here = field(name);
            match np.get(name) {
                None => {
                    let detail = format!("field `{here}` removed");
                    self.push(&here, ChangeKind::FieldRemoved, detail);
                }
                Some(new_schema) => {
                    match (oreq.contains(name.as_str()), nreq.contains(name.as_str())) {
                        (true, false) => self.push(
                            &here,
                            ChangeKind::FieldMadeOptional,
                            "required field made optional",
                        ),
                        (false, true) => self.push(
                            &here,
                            ChangeKind::FieldMadeRequired,
                            "optional field made required",
                        ),
                        _ => {}
                    }
                    self.node(old_schema, new_schema, &here);
                }
            }
        }
        for name in np.keys().filter(|k| !op.contains_key(*k)) {
            let here = field(name);
            if nreq.contains(name.as_str()) {
                self.push(
                    &here,
                    ChangeKind::RequiredFieldAdded,
                    format!("required field `{here}` added"),
                );
            } else {
                self.push(
                    &here,
                    ChangeKind::OptionalFieldAdded,
                    format!("optional field `{here}` added"),
                );
            }
        }
        // Required names without a property schema (rare, hand-written schemas).
        for name in nreq
            .difference(&oreq)
            .filter(|k| !np.contains_key(**k) && !op.contains_key(**k))
        {
            let here = field(name);
            self.push(
                &here,
                ChangeKind::RequiredFieldAdded,
                format!("required field `{here}` added"),
            );
        }

        let (oa, na) = (o.get("additionalProperties"), n.get("additionalProperties"));
        let open = |a: Option<&Value>| !matches!(a, Some(Value::Bool(false)));
        match (oa, na) {
            (Some(oa @ Value::Object(_)), Some(na @ Value::Object(_))) => {
                self.node(oa, na, &format!("{path}{{*}}"));
            }
            _ if open(oa) != open(na) => {
                let detail = if open(na) {
                    "unknown fields now allowed"
                } else {
                    "unknown fields now forbidden"
                };
                self.push(path, ChangeKind::AdditionalFieldsChanged, detail);
            }
            _ => {}
        }
    }

    fn union(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let old_variants = self.variants(old, self.old_root);
        let new_variants = self.variants(new, self.new_root);
        for (key, old_variant) in &old_variants {
            match new_variants.get(key) {
                Some(new_variant) => self.node(old_variant, new_variant, &format!("{path}<{key}>")),
                None => {
                    let detail = format!("variant `{key}` removed");
                    self.push(path, ChangeKind::VariantRemoved, detail);
                }
            }
        }
        for key in new_variants
            .keys()
            .filter(|k| !old_variants.contains_key(*k))
        {
            self.push(
                path,
                ChangeKind::VariantAdded,
                format!("variant `{key}` added"),
            );
        }
    }

    /// The variants of a union (or the node itself as one variant), keyed by what tells
    /// them apart: a discriminator `const`, a referenced definition's name, or the type.
    fn variants(&self, node: &'a Value, root: &'a Value) -> BTreeMap<String, &'a Value> {
        let members: Vec<&'a Value> = match node.as_object().and_then(union_of) {
            Some(list) => list.iter().collect(),
            None => vec![node],
        };
        let mut out = BTreeMap::new();
        for (i, member) in members.into_iter().enumerate() {
            let (resolved, via) = self.resolve(member, root);
            let key = resolved
                .get("const")
                .map(|c| {
                    format!(
                        "={}",
                        c.as_str().map_or_else(|| c.to_string(), str::to_owned)
                    )
                })
                .or_else(|| discriminator(resolved))
                .or_else(|| via.map(|r| r.rsplit('/').next().unwrap_or_default().to_owned()))
                .or_else(|| resolved.as_object().map(|o| show_set(&type_set(o))))
                .unwrap_or_else(|| format!("#{i}"));
            out.insert(key, member);
        }
        out
    }
}

fn union_of(m: &Map<String, Value>) -> Option<&Vec<Value>> {
    m.get("oneOf")
        .or_else(|| m.get("anyOf"))
        .and_then(Value::as_array)
}

/// The value of a property whose schema is a `const` (or a one-value enum): a tag.
fn discriminator(v: &Value) -> Option<String> {
    let props = v.get("properties")?.as_object()?;
    props.iter().find_map(|(name, p)| {
        let tag = p.get("const").or_else(|| {
            p.get("enum")
                .and_then(|e| e.as_array())
                .filter(|e| e.len() == 1)
                .and_then(|e| e.first())
        })?;
        Some(format!(
            "{name}={}",
            tag.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| tag.to_string())
        ))
    })
}

fn type_set(m: &Map<String, Value>) -> BTreeSet<String> {
    match m.get("type") {
        Some(Value::String(t)) => BTreeSet::from([t.clone()]),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ if m.contains_key("properties") => BTreeSet::from(["object".to_owned()]),
        _ => BTreeSet::new(),
    }
}

fn required(m: &Map<String, Value>) -> BTreeSet<&str> {
    m.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(none)".to_owned(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 80 {
                format!(
                    "{}…",
                    &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
                )
            } else {
                s
            }
        }
    }
}

fn show_set(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "any".to_owned()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join("|")
    }
}

/// The schema without documentation keywords, to tell doc-only edits from none.
fn strip_docs(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !DOCS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), strip_docs(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_docs).collect()),
        other => other.clone(),
    }
}
