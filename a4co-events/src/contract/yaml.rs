//! A minimal YAML writer for JSON values: block style, every string double-quoted (YAML's
//! double-quoted scalars accept JSON's escapes), so the output is exact and unambiguous.

use serde_json::Value;

/// Renders a JSON value as a YAML document.
pub(crate) fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => block(value, 0, &mut out),
        Value::Array(a) if !a.is_empty() => block(value, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn block(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                out.push_str(&pad);
                out.push_str(&key_text(key));
                out.push(':');
                child_value(child, indent, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                let mut rendered = String::new();
                match item {
                    Value::Object(m) if !m.is_empty() => block(item, indent + 2, &mut rendered),
                    Value::Array(a) if !a.is_empty() => block(item, indent + 2, &mut rendered),
                    other => {
                        rendered = format!("{pad}  {}\n", scalar(other));
                    }
                }
                // Put the first line after the dash: "- key: value".
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&rendered[indent + 2..]);
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn child_value(child: &Value, indent: usize, out: &mut String) {
    match child {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            block(child, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            block(child, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn key_text(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        key.to_owned()
    } else {
        scalar(&Value::String(key.to_owned()))
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn nested_maps_lists_and_scalars_render_as_block_yaml() {
        let doc = json!({
            "asyncapi": "3.0.0",
            "$ref": "#/x",
            "list": [{"a": 1, "b": [true, null]}, "two", [], {}],
            "empty": {},
            "text": "line\n\"quoted\" ñ"
        });
        let expected = concat!(
            "\"$ref\": \"#/x\"\n",
            "asyncapi: \"3.0.0\"\n",
            "empty: {}\n",
            "list:\n",
            "  - a: 1\n",
            "    b:\n",
            "      - true\n",
            "      - null\n",
            "  - \"two\"\n",
            "  - []\n",
            "  - {}\n",
            "text: \"line\\n\\\"quoted\\\" ñ\"\n",
        );
        assert_eq!(super::to_string(&doc), expected);
    }
}
