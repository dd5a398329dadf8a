//! The catalog folder: rendering it from code, checking a checked-in copy, writing it.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::evolution::{self, Change};
use super::{asyncapi, markdown};
use crate::catalog::MESSAGES;
use crate::message::BoundedContext;
use crate::schema::{envelope_schema, message_schema, schema_id, schema_path};

/// Renders the whole catalog: relative path (with `/`) to file content.
///
/// - `index.json`: every message version with its subject, stream, schema and services;
/// - `README.md`: the same for people;
/// - `envelope.schema.json` and `schemas/<type>/v<N>.schema.json` (JSON Schema 2020-12);
/// - `asyncapi.yaml` (AsyncAPI 3.0: channels, messages, who sends and who receives);
/// - `<context>.md`: one page per bounded context.
pub fn generate() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let sorted = sorted_messages();

    for info in &sorted {
        files.insert(
            schema_path(info.type_name, info.version),
            pretty(&message_schema(info)),
        );
    }
    files.insert("envelope.schema.json".into(), pretty(&envelope_schema()));
    let index: Vec<Value> = sorted
        .iter()
        .map(|m| {
            json!({
                "type": m.type_name,
                "version": m.version,
                "latest": m.latest,
                "kind": m.kind.as_str(),
                "context": m.context.name(),
                "subject": m.subject(),
                "stream": m.stream(),
                "aggregate": m.aggregate,
                "publishers": m.publishers,
                "subscribers": m.subscribers,
                "schema": schema_path(m.type_name, m.version),
                "$id": schema_id(m.type_name, m.version),
                "rustType": m.rust_name,
            })
        })
        .collect();
    files.insert(
        "index.json".into(),
        pretty(&json!({
            "envelope": "envelope.schema.json",
            "asyncapi": "asyncapi.yaml",
            "messages": index,
        })),
    );
    files.insert("asyncapi.yaml".into(), asyncapi::render(&sorted));
    files.insert("README.md".into(), markdown::index(&sorted));
    for context in BoundedContext::ALL {
        let of_context: Vec<_> = sorted
            .iter()
            .copied()
            .filter(|m| m.context == context)
            .collect();
        files.insert(
            format!("{}.md", context.name()),
            markdown::context_page(context, &of_context),
        );
    }
    files
}

fn sorted_messages() -> Vec<&'static crate::catalog::MessageInfo> {
    let mut sorted: Vec<_> = MESSAGES.iter().collect();
    sorted.sort_by_key(|m| (m.context, m.type_name, m.version));
    sorted
}

/// The AsyncAPI 3.0 document of the whole catalog, as a JSON value (the catalog writes it
/// as `asyncapi.yaml`).
pub fn asyncapi_document() -> Value {
    asyncapi::document(&sorted_messages())
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// What [`check`] found wrong with one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    /// The code has it, the folder does not (a new message version, or a new file).
    Missing,
    /// The folder's copy differs from the code's, compatibly: regenerate.
    OutOfDate,
    /// A published schema changed incompatibly, or a published version was removed.
    Breaking,
    /// The folder has a file the code does not produce.
    Stray,
}

/// One file that is not as the code renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file, relative to the catalog folder.
    pub path: String,
    /// What is wrong.
    pub kind: FindingKind,
    /// In words.
    pub detail: String,
    /// For schemas: every difference found, breaking or not.
    pub changes: Vec<Change>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.kind {
            FindingKind::Missing => "missing",
            FindingKind::OutOfDate => "out of date",
            FindingKind::Breaking => "BREAKING",
            FindingKind::Stray => "stray",
        };
        write!(f, "{tag}: {}: {}", self.path, self.detail)?;
        for change in &self.changes {
            write!(f, "\n    {change}")?;
        }
        Ok(())
    }
}

/// The result of comparing a catalog folder with the code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every file that differs, sorted by path.
    pub findings: Vec<Finding>,
    /// How many files the code renders.
    pub files: usize,
}

impl CheckReport {
    /// The folder is exactly what the code renders.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Some published contract was broken.
    pub fn is_breaking(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.kind == FindingKind::Breaking)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "catalog up to date ({} files)", self.files);
        }
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        if self.is_breaking() {
            write!(
                f,
                "published versions changed incompatibly: keep them as they are and add a new \
                 version with an Upcast from the old one"
            )
        } else {
            write!(f, "the catalog is out of date: run `a4co catalog generate`")
        }
    }
}

/// Compares the catalog folder `dir` with what the code renders.
///
/// # Errors
/// I/O errors reading the folder (a missing folder is not one: everything is missing).
pub fn check(dir: &Path) -> io::Result<CheckReport> {
    let rendered = generate();
    let on_disk = read_tree(dir)?;
    let mut findings = Vec::new();

    for (path, content) in &rendered {
        match on_disk.get(path) {
            None => findings.push(Finding {
                path: path.clone(),
                kind: FindingKind::Missing,
                detail: if path.starts_with("schemas/") {
                    "a new message version, not yet published".into()
                } else {
                    "not generated yet".into()
                },
                changes: Vec::new(),
            }),
            Some(old) if old == content => {}
            Some(old) if path.starts_with("schemas/") => {
                findings.push(compare_schema(path, old, content));
            }
            Some(_) => findings.push(Finding {
                path: path.clone(),
                kind: FindingKind::OutOfDate,
                detail: "differs from the code".into(),
                changes: Vec::new(),
            }),
        }
    }
    for path in on_disk.keys().filter(|p| !rendered.contains_key(*p)) {
        let published = path.starts_with("schemas/") && path.ends_with(".schema.json");
        findings.push(Finding {
            path: path.clone(),
            kind: if published {
                FindingKind::Breaking
            } else {
                FindingKind::Stray
            },
            detail: if published {
                "a published message version is gone from the code: producers and stored \
                 messages still use it"
                    .into()
            } else {
                "not produced by the code".into()
            },
            changes: Vec::new(),
        });
    }
    findings.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(CheckReport {
        findings,
        files: rendered.len(),
    })
}

fn compare_schema(path: &str, old_text: &str, new_text: &str) -> Finding {
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<Value>(old_text),
        serde_json::from_str::<Value>(new_text),
    ) else {
        return Finding {
            path: path.to_owned(),
            kind: FindingKind::Breaking,
            detail: "the published schema is not valid JSON".into(),
            changes: Vec::new(),
        };
    };
    let mut changes = evolution::compare(&old, &new);
    // Fixture cross-validation: each side's example must satisfy the other side's schema.
    for (example_of, schema, who) in [
        (&old, &new, "the published example fails the code's schema"),
        (&new, &old, "the code's example fails the published schema"),
    ] {
        let Some(example) = example_of.pointer("/examples/0") else {
            continue;
        };
        let Some(validator) = crate::schema::compile(schema) else {
            continue;
        };
        if let Some(error) = validator.iter_errors(example).next() {
            changes.push(Change {
                path: error.instance_path().to_string(),
                kind: evolution::ChangeKind::ConstraintChanged,
                detail: format!("{who}: {error}"),
            });
        }
    }
    let breaking = evolution::is_breaking(&changes);
    Finding {
        path: path.to_owned(),
        kind: if breaking {
            FindingKind::Breaking
        } else {
            FindingKind::OutOfDate
        },
        detail: if breaking {
            "published schema changed incompatibly".into()
        } else {
            "compatible change: regenerate".into()
        },
        changes,
    }
}

fn read_tree(dir: &Path) -> io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                // A file that is not UTF-8 text is compared as empty, so it shows as changed.
                out.insert(key, std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// Why [`write()`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing would overwrite published schemas incompatibly.
    #[error("{0}\nnothing written; pass --allow-breaking to overwrite anyway")]
    Breaking(CheckReport),
    /// The file system said no.
    #[error("cannot write the catalog: {0}")]
    Io(#[from] io::Error),
}

/// Writes the catalog into `dir`, removing files the code no longer produces. Refuses when a
/// published version would change incompatibly, unless `allow_breaking`.
///
/// # Errors
/// [`WriteError::Breaking`] with the report, or [`WriteError::Io`].
pub fn write(dir: &Path, allow_breaking: bool) -> Result<CheckReport, WriteError> {
    let report = check(dir)?;
    if report.is_breaking() && !allow_breaking {
        return Err(WriteError::Breaking(report));
    }
    for finding in report
        .findings
        .iter()
        .filter(|f| matches!(f.kind, FindingKind::Stray | FindingKind::Breaking))
    {
        let path = dir.join(&finding.path);
        if path.is_file() {
            std::fs::remove_file(path)?;
        }
    }
    for (relative, content) in generate() {
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
    }
    Ok(report)
}
