//! The request body: find the top-level `model` and splice in another one.
//!
//! The body is scanned once (`wire::json_scan`: a grammar check that crosses strings with
//! memchr and decodes nothing but escaped keys), which gives exact byte offsets of `model` and
//! of every top-level parameter, so the rewrite for each attempt (a new model ID, and for some
//! offerings a dropped parameter) is a splice of `Bytes` that share the original buffer: no
//! copy of a 1 MB prompt per provider, and every byte not rewritten goes out as the client
//! sent it. Only `model` itself is decoded, by serde.

use super::json_scan::{self, Key};
use bytes::Bytes;

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

#[derive(Debug, Clone, PartialEq)]
pub enum BodyError {
    NotUtf8,
    NotJson(String),
    NoModel,
    ModelNotString,
}

impl BodyError {
    pub fn message(&self) -> String {
        match self {
            BodyError::NotUtf8 => "request body is not valid UTF-8".into(),
            BodyError::NotJson(e) => format!("request body is not a valid JSON object: {e}"),
            BodyError::NoModel => {
                "request body has no top-level \"model\" (a string naming the model)".into()
            }
            BodyError::ModelNotString => "\"model\" must be a string".into(),
        }
    }
}

/// One top-level member of the body object, as byte offsets into it.
type Member = json_scan::Member;

/// A member's key as text; `None` when it is not UTF-8 (which `parse` refuses).
fn key_text<'s>(body: &'s [u8], m: &'s Member) -> Option<&'s str> {
    match &m.key {
        Key::Escaped(k) => Some(k),
        Key::Plain(a, b) => body.get(*a..*b).and_then(|k| std::str::from_utf8(k).ok()),
    }
}

/// Refuses a second `model` or `stream`: providers disagree on which wins, so neither do we
/// guess.
fn first_time(seen: &mut bool, key: &str) -> Result<(), BodyError> {
    if std::mem::replace(seen, true) {
        return Err(BodyError::NotJson(format!("duplicate field `{key}`")));
    }
    Ok(())
}

/// A parsed request body: the original bytes plus where its top-level members sit in them.
#[derive(Debug, Clone)]
pub struct RequestBody {
    /// The body as forwarded upstream (a leading UTF-8 BOM, if any, removed).
    bytes: Bytes,
    /// Byte range of the `model` value, quotes included.
    model_span: (usize, usize),
    members: Vec<Member>,
    pub model: String,
    pub stream: bool,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, whichever is sent.
    pub max_output_tokens: Option<u64>,
}

impl RequestBody {
    pub fn parse(raw: Bytes) -> Result<RequestBody, BodyError> {
        let bytes = if raw.starts_with(UTF8_BOM) {
            raw.slice(UTF8_BOM.len()..)
        } else {
            raw
        };
        // Only what twinroute reads is checked for UTF-8 (the keys and `model`): the prompt's
        // strings go to the provider, which validates them, and checking 1 MB here costs as
        // much as the scan itself.
        let members =
            json_scan::object_members(&bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
        let mut model = None;
        let mut model_seen = false;
        let mut stream = false;
        let mut stream_seen = false;
        let mut max_output_tokens = None;
        for m in &members {
            let key = key_text(&bytes, m).ok_or(BodyError::NotUtf8)?;
            // Values read below are ASCII when they matter (`true`, digits); anything else is
            // compared as bytes and fails to match.
            let raw = &bytes[m.value_start..m.end];
            match key {
                "model" => {
                    first_time(&mut model_seen, key)?;
                    // `null` reads as absent, as an optional field does in serde: no model.
                    model = (raw != b"null").then_some((m.value_start, raw));
                }
                "stream" => {
                    first_time(&mut stream_seen, key)?;
                    stream = raw == b"true";
                }
                "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                    max_output_tokens = max_output_tokens.or(std::str::from_utf8(raw)
                        .ok()
                        .and_then(|n| n.parse::<u64>().ok()))
                }
                _ => {}
            }
        }
        let (start, value) = model.ok_or(BodyError::NoModel)?;
        if !value.starts_with(b"\"") {
            return Err(BodyError::ModelNotString);
        }
        let value = std::str::from_utf8(value).map_err(|_| BodyError::NotUtf8)?;
        let model: String = serde_json::from_str(value).map_err(|_| BodyError::ModelNotString)?;
        Ok(RequestBody {
            model_span: (start, start + value.len()),
            bytes,
            members,
            model,
            stream,
            max_output_tokens,
        })
    }

    /// The body as received (less a BOM): what translation parses.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn key<'s>(&'s self, m: &'s Member) -> &'s str {
        key_text(&self.bytes, m).unwrap_or("")
    }

    /// Overwrite the body's bytes with zeros (for `zero_retention`): freed memory then holds no
    /// prompt. Only possible when this is the buffer's last owner, which it is once the attempts
    /// are over; returns whether it happened.
    pub fn wipe(&mut self) -> bool {
        let bytes = std::mem::take(&mut self.bytes);
        match bytes.try_into_mut() {
            Ok(mut buf) => {
                buf.fill(0);
                self.bytes = buf.freeze();
                true
            }
            Err(shared) => {
                self.bytes = shared;
                false
            }
        }
    }

    /// The top-level keys the request sends.
    pub fn param_names(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| self.key(m).to_string())
            .collect()
    }

    /// Which of `names` the request sends, in the order given.
    pub fn present<'n>(&self, names: &'n [String]) -> Vec<&'n str> {
        names
            .iter()
            .filter(|n| self.members.iter().any(|m| self.key(m) == n.as_str()))
            .map(|n| n.as_str())
            .collect()
    }

    /// A rough size of the request in tokens: bytes / 4 for the prompt (JSON punctuation makes
    /// it an overestimate, the safe side) plus the output it asks for.
    pub fn estimated_tokens(&self) -> u64 {
        self.bytes.len() as u64 / 4 + self.max_output_tokens.unwrap_or(0)
    }

    /// The body with `model` set to `model_id`, as pieces that share the original buffer.
    pub fn with_model(&self, model_id: &str) -> SplicedBody {
        self.rewrite(model_id, &[])
    }

    /// The body with `model` set to `model_id` and the top-level members named in `drop`
    /// removed, every other byte as the client sent it.
    pub fn rewrite(&self, model_id: &str, drop: &[&str]) -> SplicedBody {
        let encoded = serde_json::to_string(model_id).unwrap_or_else(|_| "\"\"".to_string());
        // Ranges to cut, each with what replaces it.
        let mut cuts: Vec<(usize, usize, Option<Bytes>)> = vec![(
            self.model_span.0,
            self.model_span.1,
            Some(Bytes::from(encoded)),
        )];
        if !drop.is_empty() {
            let dropped = |m: &Member| drop.contains(&self.key(m)) && self.key(m) != "model";
            for (i, m) in self.members.iter().enumerate() {
                if !dropped(m) {
                    continue;
                }
                let range = match self.members.get(i + 1) {
                    // `"k": v, ` up to the next key.
                    Some(next) => (m.start, next.start),
                    // The last member: from the end of the last member kept before it, which
                    // takes the comma that preceded it.
                    None => match self.members[..i].iter().rev().find(|p| !dropped(p)) {
                        Some(prev) => (prev.end, m.end),
                        None => (m.start, m.end),
                    },
                };
                cuts.push((range.0, range.1, None));
            }
            cuts.sort_by_key(|c| c.0);
            // Dropping neighbours gives overlapping removals; merge them.
            let mut merged: Vec<(usize, usize, Option<Bytes>)> = Vec::with_capacity(cuts.len());
            for c in cuts {
                match merged.last_mut() {
                    Some(last) if c.0 < last.1 && last.2.is_none() && c.2.is_none() => {
                        last.1 = last.1.max(c.1)
                    }
                    _ => merged.push(c),
                }
            }
            cuts = merged;
        }
        let mut parts = Vec::with_capacity(cuts.len() * 2 + 1);
        let mut at = 0;
        for (a, b, with) in cuts {
            parts.push(self.bytes.slice(at..a));
            if let Some(w) = with {
                parts.push(w);
            }
            at = b;
        }
        parts.push(self.bytes.slice(at..));
        SplicedBody { parts }
    }
}

/// A rewritten body, kept as pieces to be written one after the other.
#[derive(Debug, Clone)]
pub struct SplicedBody {
    pub parts: Vec<Bytes>,
}

impl SplicedBody {
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(s: &str) -> Result<RequestBody, BodyError> {
        RequestBody::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn rewrite(s: &str, to: &str) -> String {
        String::from_utf8(parse(s).unwrap().with_model(to).to_vec()).unwrap()
    }

    #[test]
    fn finds_model_anywhere_at_top_level() {
        assert_eq!(parse(r#"{"model":"a","messages":[]}"#).unwrap().model, "a");
        assert_eq!(
            parse(r#"{"messages":[{"role":"user","content":"hi"}],"model":"b"}"#)
                .unwrap()
                .model,
            "b"
        );
        assert_eq!(parse(" \n{ \"model\" \t:\n \"c\" }\n").unwrap().model, "c");
    }

    #[test]
    fn nested_model_is_not_touched() {
        let s = r#"{"metadata":{"model":"inner"},"tools":[{"model":"x"}],"model":"outer"}"#;
        let b = parse(s).unwrap();
        assert_eq!(b.model, "outer");
        let out = rewrite(s, "new");
        assert_eq!(
            out,
            r#"{"metadata":{"model":"inner"},"tools":[{"model":"x"}],"model":"new"}"#
        );
    }

    #[test]
    fn nested_only_means_no_model() {
        assert_eq!(
            parse(r#"{"metadata":{"model":"inner"}}"#).unwrap_err(),
            BodyError::NoModel
        );
    }

    #[test]
    fn escaped_and_unicode_model_names() {
        let b = parse(r#"{"model":"gpt\u002d4\"x\\","m":"é"}"#).unwrap();
        assert_eq!(b.model, "gpt-4\"x\\");
        let out = rewrite(
            r#"{"model":"gpt\u002d4","content":"héllo ✓ \"model\": \"no\""}"#,
            "模型/ü",
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "模型/ü");
        assert_eq!(v["content"], "héllo ✓ \"model\": \"no\"");
    }

    #[test]
    fn rewrite_escapes_the_new_id() {
        let out = rewrite(r#"{"model":"a"}"#, "we\"ird\\id");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "we\"ird\\id");
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(parse("not json"), Err(BodyError::NotJson(_))));
        assert!(matches!(parse(r#"["model"]"#), Err(BodyError::NotJson(_))));
        assert!(matches!(
            parse(r#"{"model":"a""#),
            Err(BodyError::NotJson(_))
        ));
        assert!(matches!(
            parse(r#"{"model":"a"} trailing"#),
            Err(BodyError::NotJson(_))
        ));
        assert_eq!(
            parse(r#"{"model":42}"#).unwrap_err(),
            BodyError::ModelNotString
        );
        // serde reads `null` as an absent Option: reported as missing, still a 400.
        assert_eq!(parse(r#"{"model":null}"#).unwrap_err(), BodyError::NoModel);
        assert_eq!(
            parse(r#"{"model":{"id":"a"}}"#).unwrap_err(),
            BodyError::ModelNotString
        );
        assert_eq!(parse(r#"{}"#).unwrap_err(), BodyError::NoModel);
        assert_eq!(
            RequestBody::parse(Bytes::from_static(b"{\"model\":\"\xff\"}")).unwrap_err(),
            BodyError::NotUtf8
        );
        assert_eq!(
            RequestBody::parse(Bytes::from_static(b"{\"mod\xffel\":\"a\"}")).unwrap_err(),
            BodyError::NotUtf8
        );
    }

    #[test]
    fn prompt_bytes_are_not_decoded_only_carried() {
        // Not UTF-8 inside a prompt string: the provider judges it; twinroute forwards it as sent.
        let raw = b"{\"messages\":\"caf\xe9\",\"model\":\"a\"}";
        let b = RequestBody::parse(Bytes::from_static(raw)).unwrap();
        assert_eq!(b.model, "a");
        assert_eq!(b.with_model("a").to_vec(), raw.to_vec());
    }

    #[test]
    fn duplicate_model_keys_are_rejected() {
        // Two `model` keys: providers disagree on which wins, so neither do we guess.
        assert!(matches!(
            parse(r#"{"model":"a","model":"b"}"#),
            Err(BodyError::NotJson(_))
        ));
    }

    #[test]
    fn bom_is_stripped() {
        let mut raw = UTF8_BOM.to_vec();
        raw.extend_from_slice(br#"{"model":"a"}"#);
        let b = RequestBody::parse(Bytes::from(raw)).unwrap();
        assert_eq!(b.model, "a");
        assert_eq!(b.with_model("z").to_vec(), br#"{"model":"z"}"#);
    }

    #[test]
    fn stream_flag() {
        assert!(parse(r#"{"model":"a","stream":true}"#).unwrap().stream);
        assert!(!parse(r#"{"model":"a","stream":false}"#).unwrap().stream);
        assert!(!parse(r#"{"model":"a"}"#).unwrap().stream);
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let deep = format!(
            "{{\"model\":\"a\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        // Unknown fields are skipped iteratively: valid, deep JSON is accepted, no stack overflow.
        assert_eq!(parse(&deep).unwrap().model, "a");
        let unbalanced = format!("{{\"model\":\"a\",\"x\":{}}}", "[".repeat(100_000));
        assert!(matches!(parse(&unbalanced), Err(BodyError::NotJson(_))));
    }

    #[test]
    fn large_body_splice_is_byte_identical_but_for_model() {
        let filler = "x".repeat(1 << 20);
        let s = format!(r#"{{"messages":[{{"role":"user","content":"{filler}"}}],"model":"a"}}"#);
        let out = rewrite(&s, "bbb");
        assert_eq!(out.len(), s.len() + 2);
        assert_eq!(out.replace("\"model\":\"bbb\"", "\"model\":\"a\""), s);
    }

    fn drop(s: &str, names: &[&str]) -> String {
        String::from_utf8(parse(s).unwrap().rewrite("m2", names).to_vec()).unwrap()
    }

    #[test]
    fn drop_params_cuts_exactly_the_named_members() {
        let s = "{ \"model\" : \"a\",\n  \"temperature\": 0.2,\n  \"messages\": [{\"temperature\": 1}],\n  \"top_p\" :0.9 }";
        // Middle member: its bytes up to the next key go; nested keys of the same name stay.
        assert_eq!(
            drop(s, &["temperature"]),
            "{ \"model\" : \"m2\",\n  \"messages\": [{\"temperature\": 1}],\n  \"top_p\" :0.9 }"
        );
        // Last member: the comma before it goes with it.
        assert_eq!(
            drop(s, &["top_p"]),
            "{ \"model\" : \"m2\",\n  \"temperature\": 0.2,\n  \"messages\": [{\"temperature\": 1}] }"
        );
        // Neighbours, including the last: still valid JSON, `model` untouched but for its value.
        let out = drop(s, &["temperature", "messages", "top_p"]);
        assert_eq!(out, "{ \"model\" : \"m2\" }");
        // First member, before `model`.
        assert_eq!(
            drop(r#"{"top_p":1,"model":"a","n":2}"#, &["top_p"]),
            r#"{"model":"m2","n":2}"#
        );
        // Absent names and `model` itself are ignored.
        assert_eq!(
            drop(r#"{"model":"a"}"#, &["top_p", "model"]),
            r#"{"model":"m2"}"#
        );
        // Escaped keys are matched by their decoded name.
        assert_eq!(
            drop(
                r#"{"model":"a","temp\u0065rature":1,"x":2}"#,
                &["temperature"]
            ),
            r#"{"model":"m2","x":2}"#
        );
    }

    #[test]
    fn drop_params_output_is_the_input_minus_the_keys() {
        let s = r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.7,"model":"a","seed":4,"top_p":1,"stream":false}"#;
        for names in [
            vec!["temperature"],
            vec!["seed", "top_p"],
            vec!["stream"],
            vec!["messages", "stream"],
        ] {
            let out: Value = serde_json::from_str(&drop(s, &names)).unwrap();
            let mut want: Value = serde_json::from_str(s).unwrap();
            for n in &names {
                want.as_object_mut().unwrap().remove(*n);
            }
            want["model"] = "m2".into();
            assert_eq!(out, want, "{names:?}");
        }
    }

    #[test]
    fn wipe_zeroes_a_unique_buffer_and_leaves_a_shared_one() {
        let mut b = parse(r#"{"model":"a","messages":[{"content":"secret prompt"}]}"#).unwrap();
        let spliced = b.with_model("x");
        // Still shared with an attempt's pieces: not wiped.
        assert!(!b.wipe());
        std::mem::drop(spliced);
        assert!(b.wipe());
        assert!(b.bytes.iter().all(|&c| c == 0));
    }

    #[test]
    fn params_and_token_estimate() {
        let b = parse(r#"{"model":"a","max_completion_tokens":500,"temperature":1}"#).unwrap();
        assert_eq!(
            b.param_names(),
            vec!["model", "max_completion_tokens", "temperature"]
        );
        assert_eq!(
            b.present(&["top_p".to_string(), "temperature".to_string()]),
            vec!["temperature"]
        );
        assert_eq!(b.max_output_tokens, Some(500));
        assert_eq!(b.estimated_tokens(), b.len() as u64 / 4 + 500);
    }
}

/// Property tests: the scanner and rewriter against arbitrary JSON objects and arbitrary bytes.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            ".*".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// A request body: `model` plus arbitrary other members, serialized compactly or pretty.
    fn body() -> impl Strategy<Value = (Value, String)> {
        (
            ".{0,20}",
            prop::collection::btree_map("[a-z_]{1,8}", value(), 0..6),
            any::<bool>(),
        )
            .prop_map(|(model, rest, pretty)| {
                let mut m: Map<String, Value> = rest
                    .into_iter()
                    .filter(|(k, _)| k != "model" && k != "stream")
                    .collect();
                m.insert("model".into(), Value::String(model));
                let v = Value::Object(m);
                let text = if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    v.to_string()
                };
                (v, text)
            })
    }

    proptest! {
        #[test]
        fn rewrite_changes_only_model(((v, text), new_id) in (body(), ".{0,30}")) {
            let b = RequestBody::parse(Bytes::from(text)).unwrap();
            prop_assert_eq!(Some(b.model.as_str()), v["model"].as_str());
            let out: Value = serde_json::from_slice(&b.with_model(&new_id).to_vec()).unwrap();
            let mut want = v.clone();
            want["model"] = Value::String(new_id);
            prop_assert_eq!(out, want);
        }

        #[test]
        fn dropping_members_removes_exactly_them((v, text) in body(), pick in any::<u64>()) {
            let b = RequestBody::parse(Bytes::from(text)).unwrap();
            let keys: Vec<String> = v.as_object().unwrap().keys().filter(|k| *k != "model").cloned().collect();
            let drop: Vec<&str> = keys.iter().enumerate().filter(|(i, _)| pick >> (i % 64) & 1 == 1).map(|(_, k)| k.as_str()).collect();
            let out: Value = serde_json::from_slice(&b.rewrite("x", &drop).to_vec()).unwrap();
            let mut want = v.clone();
            for k in &drop {
                want.as_object_mut().unwrap().remove(*k);
            }
            want["model"] = "x".into();
            prop_assert_eq!(out, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            let input_ok = serde_json::from_slice::<Value>(&raw).is_ok();
            if let Ok(b) = RequestBody::parse(Bytes::from(raw)) {
                let out = b.rewrite("m", &["temperature"]).to_vec();
                if input_ok {
                    prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
                }
            }
        }

        #[test]
        fn mutated_bodies_never_panic((_, text) in body(), at in any::<usize>(), byte in any::<u8>()) {
            let mut raw = text.into_bytes();
            if !raw.is_empty() {
                let i = at % raw.len();
                raw[i] = byte;
            }
            // Skipped values are validated by syntax only (serde_json does not range-check a
            // skipped `1E999999`), so only an input that `Value` accepts must come out accepted.
            let input_ok = serde_json::from_slice::<Value>(&raw).is_ok();
            if let Ok(b) = RequestBody::parse(Bytes::from(raw)) {
                let out = b.rewrite("m", &["a"]).to_vec();
                if input_ok {
                    prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
                }
            }
        }
    }
}
