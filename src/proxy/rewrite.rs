//! Edits to a request body, spliced into the client's own bytes: only the members changed
//! are re-encoded, so numbers of any size or precision, string escapes, whitespace and key
//! order reach the provider exactly as the client sent them.

use crate::error::ProxyError;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

/// What to change in a body.
#[derive(Debug, Default, Clone, Copy)]
pub struct Edits<'a> {
    /// Rename the top-level `model`.
    pub model: Option<&'a str>,
    /// Make `stream_options.include_usage` true, whatever `stream_options` was before.
    pub include_usage: bool,
    /// Lower the output-token limit to a cap.
    pub max_tokens: Option<Cap>,
    /// Ask for token logprobs (OpenAI chat `logprobs: true`).
    pub logprobs: bool,
}

/// An output-token cap: each of `keys` present is lowered to `limit` (a value that is not
/// a number is replaced); when none is present, the first is added.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub keys: &'static [&'static str],
    pub limit: u64,
}

impl Edits<'_> {
    pub fn is_empty(&self) -> bool {
        self.model.is_none() && !self.include_usage && self.max_tokens.is_none() && !self.logprobs
    }
}

const USAGE_ON: &str = r#"{"include_usage":true}"#;

/// Applies `edits` to the JSON object in `body`. Every occurrence of an edited member is
/// replaced (a duplicate key must not carry the client's value past the edit), and a
/// `stream_options` that is missing is added at the front of the object.
pub fn apply(body: &[u8], edits: Edits<'_>) -> Result<Vec<u8>, ProxyError> {
    let members = top_level_members(body)?;
    let mut splices: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    if let Some(model) = edits.model {
        let text = serde_json::to_vec(model).map_err(|e| ProxyError::Internal(e.to_string()))?;
        for (_, span) in members.iter().filter(|(k, _)| k == "model") {
            splices.push((span.clone(), text.clone()));
        }
    }
    if edits.include_usage {
        let mut found = false;
        for (_, span) in members.iter().filter(|(k, _)| k == "stream_options") {
            found = true;
            let value = &body[span.clone()];
            let text = match top_level_members(value) {
                // The client's other options stay as they were, byte for byte.
                Ok(inner) => set_member(value, &inner, "include_usage", b"true"),
                // null, or something that is not options at all: the provider would reject
                // or ignore it; usage reporting is what Tollgate needs.
                Err(_) => USAGE_ON.as_bytes().to_vec(),
            };
            splices.push((span.clone(), text));
        }
        if !found {
            splices.push(insertion(
                body,
                &members,
                "stream_options",
                USAGE_ON.as_bytes(),
            ));
        }
    }
    if edits.logprobs {
        splices.extend(member_set(body, &members, "logprobs", b"true"));
    }
    if let Some(cap) = edits.max_tokens {
        let limit = cap.limit.to_string().into_bytes();
        let mut found = false;
        for (_, span) in members
            .iter()
            .filter(|(k, _)| cap.keys.contains(&k.as_str()))
        {
            found = true;
            let within = std::str::from_utf8(&body[span.clone()])
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|v| v <= cap.limit);
            if !within {
                splices.push((span.clone(), limit.clone()));
            }
        }
        if !found {
            splices.push(insertion(body, &members, cap.keys[0], &limit));
        }
    }
    Ok(splice(body, splices))
}

/// Splices that give every `key` member of `object` the value `value`, or add the member.
fn member_set(
    object: &[u8],
    members: &[(String, Range<usize>)],
    key: &str,
    value: &[u8],
) -> Vec<(Range<usize>, Vec<u8>)> {
    let mut splices: Vec<_> = members
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, span)| (span.clone(), value.to_vec()))
        .collect();
    if splices.is_empty() {
        splices.push(insertion(object, members, key, value));
    }
    splices
}

/// `object` with every `key` member's value replaced by `value`, or the member added.
fn set_member(
    object: &[u8],
    members: &[(String, Range<usize>)],
    key: &str,
    value: &[u8],
) -> Vec<u8> {
    splice(object, member_set(object, members, key, value))
}

/// A new member right after the object's opening brace.
fn insertion(
    object: &[u8],
    members: &[(String, Range<usize>)],
    key: &str,
    value: &[u8],
) -> (Range<usize>, Vec<u8>) {
    let open = object
        .iter()
        .position(|b| *b == b'{')
        .expect("a parsed object has an opening brace");
    let mut member = serde_json::to_vec(key).expect("a string serializes");
    member.push(b':');
    member.extend_from_slice(value);
    if !members.is_empty() {
        member.push(b',');
    }
    (open + 1..open + 1, member)
}

/// `bytes` with each range replaced; ranges do not overlap.
fn splice(bytes: &[u8], mut splices: Vec<(Range<usize>, Vec<u8>)>) -> Vec<u8> {
    splices.sort_by_key(|(range, _)| range.start);
    let extra: usize = splices.iter().map(|(_, t)| t.len()).sum();
    let mut out = Vec::with_capacity(bytes.len() + extra);
    let mut at = 0;
    for (range, text) in splices {
        out.extend_from_slice(&bytes[at..range.start]);
        out.extend_from_slice(&text);
        at = range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// The top-level members of a JSON object, in order, each with the byte range of its value.
fn top_level_members(body: &[u8]) -> Result<Vec<(String, Range<usize>)>, ProxyError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = (&mut de)
        .deserialize_map(Members)
        .map_err(|e| ProxyError::BadJson(e.to_string()))?;
    de.end().map_err(|e| ProxyError::BadJson(e.to_string()))?;
    let base = body.as_ptr() as usize;
    Ok(raw
        .into_iter()
        .map(|(key, value)| {
            // A borrowed RawValue is a slice of `body`: its address gives its position.
            let start = value.get().as_ptr() as usize - base;
            (key, start..start + value.get().len())
        })
        .collect())
}

struct Members;

impl<'de> Visitor<'de> for Members {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            out.push((key, value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn edit(body: &str, edits: Edits) -> String {
        String::from_utf8(apply(body.as_bytes(), edits).unwrap()).unwrap()
    }

    const USAGE: Edits = Edits {
        model: None,
        include_usage: true,
        max_tokens: None,
        logprobs: false,
    };

    #[test]
    fn numbers_escapes_and_order_pass_untouched() {
        let body = r#"{ "seed": 12345678901234567890123, "temperature": 0.1000000000000000055511151231257827,
  "model":"gpt-4o", "messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \"q\""}], "a":1 }"#;
        let out = edit(
            body,
            Edits {
                model: Some("gpt-4o-mini"),
                ..Edits::default()
            },
        );
        assert_eq!(out, body.replace(r#""gpt-4o""#, r#""gpt-4o-mini""#));
    }

    #[test]
    fn a_cap_lowers_raises_nothing_and_is_added_when_absent() {
        let cap = |limit| Edits {
            max_tokens: Some(Cap {
                keys: &["max_completion_tokens", "max_tokens"],
                limit,
            }),
            ..Edits::default()
        };
        let body = r#"{"model":"m","max_tokens":1000, "max_completion_tokens": 50}"#;
        assert_eq!(
            edit(body, cap(100)),
            r#"{"model":"m","max_tokens":100, "max_completion_tokens": 50}"#
        );
        assert_eq!(
            edit(r#"{"model":"m"}"#, cap(100)),
            r#"{"max_completion_tokens":100,"model":"m"}"#
        );
        assert_eq!(
            edit(r#"{"model":"m","max_tokens":null}"#, cap(7)),
            r#"{"model":"m","max_tokens":7}"#
        );
    }

    #[test]
    fn a_null_or_odd_stream_options_is_replaced_never_duplicated() {
        for (opts, want) in [
            ("null", json!({"include_usage": true})),
            ("true", json!({"include_usage": true})),
            ("{}", json!({"include_usage": true})),
            (r#"{"include_usage":false}"#, json!({"include_usage": true})),
            (r#"{"x":1}"#, json!({"include_usage": true, "x": 1})),
            (
                r#"{"x":1,"include_usage":null}"#,
                json!({"include_usage": true, "x": 1}),
            ),
        ] {
            let body = format!(r#"{{"stream":true,"stream_options":{opts},"model":"m"}}"#);
            let out = edit(&body, USAGE);
            assert_eq!(out.matches("stream_options").count(), 1, "{out}");
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["stream_options"], want, "{out}");
        }
    }

    #[test]
    fn duplicate_keys_are_all_edited() {
        let out = edit(
            r#"{"stream_options":null,"model":"a","stream_options":{"include_usage":false}}"#,
            USAGE,
        );
        assert_eq!(
            out,
            r#"{"stream_options":{"include_usage":true},"model":"a","stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn a_missing_member_is_added_at_the_front() {
        assert_eq!(
            edit(r#"  {"model":"m"}"#, USAGE),
            r#"  {"stream_options":{"include_usage":true},"model":"m"}"#
        );
        assert_eq!(
            edit("{}", USAGE),
            r#"{"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for body in ["[1]", "{\"a\":1} {}", "{\"a\":", "\"x\""] {
            assert!(apply(body.as_bytes(), USAGE).is_err(), "{body}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::vec((".{0,8}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// A JSON text as a client may write it, with its members kept apart for objects.
    #[derive(Debug, Clone)]
    enum Doc {
        Text(String),
        Object(Obj),
    }

    #[derive(Debug, Clone)]
    struct Obj {
        members: Vec<Member>,
        /// Whitespace before the closing brace.
        close: String,
    }

    #[derive(Debug, Clone)]
    struct Member {
        /// The key as decoded, and as written (possibly with escapes).
        key: String,
        key_json: String,
        /// Whitespace before the key, before the colon, after it, and after the value.
        ws: [String; 4],
        value: Doc,
    }

    impl Doc {
        fn render(&self) -> String {
            match self {
                Doc::Text(t) => t.clone(),
                Doc::Object(o) => o.render(),
            }
        }
    }

    impl Obj {
        fn render(&self) -> String {
            let members: Vec<String> = self.members.iter().map(Member::render).collect();
            format!("{{{}{}}}", members.join(","), self.close)
        }

        /// This object with every `key` member's value set to `value`, or the member added
        /// at the front: what `apply` must produce, built from the parts.
        fn set(&mut self, key: &str, value: impl Fn(&Doc) -> Doc) {
            let mut found = false;
            for m in self.members.iter_mut().filter(|m| m.key == key) {
                m.value = value(&m.value);
                found = true;
            }
            if !found {
                self.members.insert(
                    0,
                    Member {
                        key: key.into(),
                        key_json: format!("\"{key}\""),
                        ws: Default::default(),
                        value: value(&Doc::Text("null".into())),
                    },
                );
            }
        }
    }

    impl Member {
        fn render(&self) -> String {
            let [a, b, c, d] = &self.ws;
            format!("{a}{}{b}:{c}{}{d}", self.key_json, self.value.render())
        }
    }

    fn ws() -> impl Strategy<Value = String> {
        "[ \t\n\r]{0,2}"
    }

    fn doc() -> BoxedStrategy<Doc> {
        let leaf = prop_oneof![
            // Numbers past any float's precision or integer's range, as written.
            "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,2})?".prop_map(Doc::Text),
            crate::usage::proptests::jstr().prop_map(|s| Doc::Text(s.json)),
            prop::sample::select(vec!["true", "false", "null"]).prop_map(|t| Doc::Text(t.into())),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                (
                    prop::collection::vec((ws(), inner.clone(), ws()), 0..4),
                    ws()
                )
                    .prop_map(|(items, empty)| {
                        let items: Vec<String> = items
                            .iter()
                            .map(|(a, v, b)| format!("{a}{}{b}", v.render()))
                            .collect();
                        Doc::Text(if items.is_empty() {
                            format!("[{empty}]")
                        } else {
                            format!("[{}]", items.join(","))
                        })
                    }),
                obj(inner).prop_map(Doc::Object),
            ]
        })
        .boxed()
    }

    fn obj(value: BoxedStrategy<Doc>) -> impl Strategy<Value = Obj> {
        let key = prop_oneof![
            3 => prop::sample::select(vec!["model", "stream_options", "include_usage", "stream"])
                .prop_map(String::from),
            1 => "[a-z_]{1,8}",
        ];
        // Keys spelled plainly, or with some letters as `\u` escapes.
        let key = (key, any::<u64>()).prop_map(|(key, bits)| {
            let json = key
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if (bits >> (2 * i % 64)) & 3 == 0 {
                        format!("\\u{:04x}", c as u32)
                    } else {
                        c.to_string()
                    }
                })
                .collect::<String>();
            (key, format!("\"{json}\""))
        });
        let member =
            (key, [ws(), ws(), ws(), ws()], value).prop_map(|((key, key_json), ws, value)| {
                Member {
                    key,
                    key_json,
                    ws,
                    value,
                }
            });
        (prop::collection::vec(member, 0..6), ws())
            .prop_map(|(members, close)| Obj { members, close })
    }

    proptest! {
        /// Any object, however it is spelled: the output is the input with exactly the
        /// edited values replaced (or the missing member added at the front), byte for byte.
        #[test]
        fn edits_splice_only_the_edited_values(
            lead in ws(),
            object in obj(doc()),
            trail in ws(),
            rename in proptest::option::of(".{0,12}"),
            include_usage in any::<bool>(),
        ) {
            let body = format!("{lead}{}{trail}", object.render());
            let out = apply(body.as_bytes(), Edits { model: rename.as_deref(), include_usage, ..Edits::default() }).unwrap();
            let mut want = object.clone();
            if let Some(m) = &rename
                && want.members.iter().any(|m| m.key == "model")
            {
                want.set("model", |_| Doc::Text(serde_json::to_string(m).unwrap()));
            }
            if include_usage {
                want.set("stream_options", |v| match v {
                    Doc::Object(o) => {
                        let mut o = o.clone();
                        o.set("include_usage", |_| Doc::Text("true".into()));
                        Doc::Object(o)
                    }
                    Doc::Text(_) => Doc::Text(r#"{"include_usage":true}"#.into()),
                });
            }
            let want = format!("{lead}{}{trail}", want.render());
            prop_assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    proptest! {
        /// Any object in, the same object out but for the edited members; bytes outside the
        /// edited members are the client's.
        #[test]
        fn only_edited_members_change(
            members in prop::collection::vec(("[a-z_]{1,12}|model|stream_options", json_value()), 0..8),
            rename in proptest::option::of("[a-z0-9.-]{1,20}"),
            include_usage in any::<bool>(),
            pretty in any::<bool>(),
        ) {
            let object = Value::Object(members.into_iter().collect());
            let body = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let edits = Edits { model: rename.as_deref(), include_usage, ..Edits::default() };
            let out = apply(body.as_bytes(), edits).unwrap();
            let got: Value = serde_json::from_slice(&out).unwrap();
            // Compared with the body as parsed (not `object`): parsing is what the provider
            // does, and float text does not always parse back to the same f64.
            let mut want: Value = serde_json::from_str(&body).unwrap();
            let obj = want.as_object_mut().unwrap();
            if let Some(m) = rename.as_ref().filter(|_| obj.contains_key("model")) {
                obj.insert("model".into(), m.clone().into());
            }
            if include_usage {
                let opts = obj.entry("stream_options").or_insert(json!({}));
                if !opts.is_object() {
                    *opts = json!({});
                }
                opts["include_usage"] = true.into();
            }
            prop_assert_eq!(&got, &want);
            if edits.is_empty() {
                prop_assert_eq!(out, body.into_bytes());
            }
        }
    }
}
