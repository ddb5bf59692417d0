//! Minimal JSON instances of a JSON schema, for structured outputs and tool-call arguments,
//! and a way to break one on purpose (`bad-tool-args`).
//!
//! It covers what extraction and tool schemas use in practice: `type` (one or a list),
//! `properties` / `required`, `items`, `enum`, `const`, `anyOf` / `oneOf` (first non-null
//! branch), `allOf` (merged), local `$ref` (`#/$defs/…`, `#/definitions/…`), numeric bounds,
//! string lengths and the common string `format`s. `pattern` is not honoured.

use serde_json::{Map, Value, json};

use super::text::word;

/// Past this depth objects keep only their required properties and arrays their minimum.
const SHALLOW: usize = 8;
/// A self-referencing schema that requires itself ends here, as `null`.
const MAX_DEPTH: usize = 32;

/// A JSON value valid against `schema`; `seed` picks the words in strings.
pub(crate) fn instance(schema: &Value, seed: u64) -> Value {
    let mut g = Generator {
        root: schema,
        seed,
        strings: 0,
    };
    g.value(schema, 0)
}

struct Generator<'a> {
    root: &'a Value,
    seed: u64,
    /// Strings made so far: consecutive strings get different words.
    strings: u64,
}

impl Generator<'_> {
    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        let Some(s) = schema.as_object() else {
            // `true` or a malformed schema: anything goes.
            return self.word();
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(target) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| resolve(self.root, r))
        {
            return self.value(target, depth + 1);
        }
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(first) = s
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return first.clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = s.get(key).and_then(Value::as_array) {
                let branch = branches
                    .iter()
                    .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                    .or(branches.first());
                if let Some(branch) = branch {
                    return self.value(branch, depth + 1);
                }
            }
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            let merged = self.merge(s, all);
            return self.value(&merged, depth + 1);
        }
        match type_of(s) {
            "null" => Value::Null,
            "boolean" => Value::Bool(true),
            "integer" => integer(s),
            "number" => number(s),
            "array" => self.array(s, depth),
            "object" => self.object(s, depth),
            _ => self.string(s),
        }
    }

    /// `allOf` branches folded into one object schema: properties and required lists joined.
    fn merge(&self, s: &Map<String, Value>, all: &[Value]) -> Value {
        let mut merged = s.clone();
        merged.remove("allOf");
        let mut properties = Map::new();
        let mut required: Vec<Value> = Vec::new();
        let own = Value::Object(s.clone());
        let branches = all
            .iter()
            .map(|b| match b.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(self.root, r).unwrap_or(b),
                None => b,
            })
            .chain([&own]);
        for branch in branches {
            let Some(b) = branch.as_object() else {
                continue;
            };
            if let Some(p) = b.get("properties").and_then(Value::as_object) {
                properties.extend(p.clone());
            }
            required.extend(
                b.get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            for (k, v) in b {
                if !matches!(k.as_str(), "properties" | "required" | "allOf") {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        if !properties.is_empty() {
            merged.insert("properties".into(), Value::Object(properties));
        }
        if !required.is_empty() {
            merged.insert("required".into(), Value::Array(required));
        }
        Value::Object(merged)
    }

    fn word(&mut self) -> Value {
        self.strings += 1;
        Value::from(word(self.seed.wrapping_add(self.strings)))
    }

    fn string(&mut self, s: &Map<String, Value>) -> Value {
        let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
        let text = match format {
            "date-time" => "2025-01-01T00:00:00Z".to_owned(),
            "date" => "2025-01-01".to_owned(),
            "time" => "00:00:00Z".to_owned(),
            "email" => "user@example.com".to_owned(),
            "uri" | "url" => "https://example.com/".to_owned(),
            "uuid" => "00000000-0000-4000-8000-000000000000".to_owned(),
            "ipv4" => "192.0.2.1".to_owned(),
            _ => {
                let first = self.word();
                let mut text = first.as_str().unwrap_or_default().to_owned();
                let min = bound(s, "minLength").unwrap_or(0.0) as usize;
                while text.chars().count() < min {
                    text.push(' ');
                    text.push_str(self.word().as_str().unwrap_or_default());
                }
                text
            }
        };
        match bound(s, "maxLength") {
            Some(max) => Value::from(text.chars().take(max as usize).collect::<String>()),
            None => Value::from(text),
        }
    }

    fn array(&mut self, s: &Map<String, Value>, depth: usize) -> Value {
        let min = bound(s, "minItems").unwrap_or(0.0) as usize;
        let max = bound(s, "maxItems").map_or(usize::MAX, |m| m as usize);
        let len = if depth >= SHALLOW { min } else { min.max(1) }.min(max);
        let prefix = s.get("prefixItems").and_then(Value::as_array);
        let items = s.get("items").filter(|i| i.is_object());
        (0..len)
            .map(|i| match prefix.and_then(|p| p.get(i)).or(items) {
                Some(item) => self.value(item, depth + 1),
                None => self.word(),
            })
            .collect::<Vec<_>>()
            .into()
    }

    fn object(&mut self, s: &Map<String, Value>, depth: usize) -> Value {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let properties = s.get("properties").and_then(Value::as_object);
        let mut out = Map::new();
        for (name, property) in properties.into_iter().flatten() {
            if depth < SHALLOW || required.contains(&name.as_str()) {
                out.insert(name.clone(), self.value(property, depth + 1));
            }
        }
        // Required but not described: any value will do.
        for name in required {
            if !out.contains_key(name) {
                let v = self.word();
                out.insert(name.to_owned(), v);
            }
        }
        Value::Object(out)
    }
}

/// A local reference: `#`, `#/$defs/Name`, `#/definitions/Name` or any JSON pointer.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    root.pointer(reference.strip_prefix('#')?)
}

/// The schema's type; without one, what its keywords imply (a bare `{}` gets a word).
fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => {
            let names = || types.iter().filter_map(Value::as_str);
            names()
                .find(|t| *t != "null")
                .or(names().next())
                .unwrap_or("string")
        }
        _ if s.contains_key("properties") || s.contains_key("required") => "object",
        _ if s.contains_key("items") || s.contains_key("prefixItems") => "array",
        _ => "string",
    }
}

fn bound(s: &Map<String, Value>, key: &str) -> Option<f64> {
    s.get(key).and_then(Value::as_f64)
}

/// A bound on a number, and whether it is exclusive.
type Bound = Option<(f64, bool)>;

/// The lower and upper bounds of a number.
fn range(s: &Map<String, Value>) -> (Bound, Bound) {
    let lower = bound(s, "exclusiveMinimum")
        .map(|x| (x, true))
        .or(bound(s, "minimum").map(|x| (x, false)));
    let upper = bound(s, "exclusiveMaximum")
        .map(|x| (x, true))
        .or(bound(s, "maximum").map(|x| (x, false)));
    (lower, upper)
}

fn number(s: &Map<String, Value>) -> Value {
    let v = match range(s) {
        (Some((lo, _)), Some((hi, _))) => (lo + hi) / 2.0,
        (Some((lo, _)), None) => lo + 1.0,
        (None, Some((hi, _))) => hi - 1.0,
        (None, None) => 1.0,
    };
    if v.fract() == 0.0 && v.abs() < 1e15 {
        Value::from(v as i64)
    } else {
        json!(v)
    }
}

fn integer(s: &Map<String, Value>) -> Value {
    let (lower, upper) = range(s);
    let lo = lower.map(|(x, exclusive)| {
        let c = x.ceil();
        if exclusive && c == x { c + 1.0 } else { c }
    });
    let hi = upper.map(|(x, exclusive)| {
        let f = x.floor();
        if exclusive && f == x { f - 1.0 } else { f }
    });
    let v = match (lo, hi) {
        (Some(lo), _) => lo,
        (None, Some(hi)) => hi.min(1.0),
        (None, None) => 1.0,
    };
    Value::from(v as i64)
}

/// Makes a valid `instance` of `schema` invalid while keeping it JSON: drops the first
/// required property, or else gives a typed property a value of another type. Returns
/// whether it could.
pub(crate) fn violate(schema: &Value, instance: &mut Value) -> bool {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(schema, r).unwrap_or(schema),
        None => schema,
    };
    let Some(object) = instance.as_object_mut() else {
        return false;
    };
    let required = schema.get("required").and_then(Value::as_array);
    if let Some(name) = required.and_then(|r| r.first()).and_then(Value::as_str) {
        object.remove(name);
        return true;
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (name, property) in properties.into_iter().flatten() {
        let wrong = match property.get("type").and_then(Value::as_str) {
            Some("string") => json!(12345),
            Some("integer" | "number" | "boolean" | "array" | "object" | "null") => {
                json!("not the declared type")
            }
            _ => continue,
        };
        object.insert(name.clone(), wrong);
        return true;
    }
    false
}
