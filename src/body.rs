//! The request body: find the top-level `model` and splice in another one.
//!
//! The body is parsed once, by serde_json into a struct that borrows only the raw `model`
//! value; every other field is skipped (validated, never allocated). That gives exact byte
//! offsets of the value, so the rewrite for each attempt is a splice of three `Bytes` that
//! share the original buffer: no copy of a 1 MB prompt per provider.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

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

#[derive(Deserialize)]
struct TopLevel<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
}

/// A parsed request body: the original bytes plus where `model`'s JSON value sits in them.
#[derive(Debug, Clone)]
pub struct RequestBody {
    /// The body as forwarded upstream (a leading UTF-8 BOM, if any, removed).
    bytes: Bytes,
    /// Byte range of the `model` value, quotes included.
    model_span: (usize, usize),
    pub model: String,
    pub stream: bool,
}

impl RequestBody {
    pub fn parse(raw: Bytes) -> Result<RequestBody, BodyError> {
        let bytes = if raw.starts_with(UTF8_BOM) {
            raw.slice(UTF8_BOM.len()..)
        } else {
            raw
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| BodyError::NotUtf8)?;
        // serde's derived struct also accepts a JSON array; the API needs an object.
        if !text.trim_start().starts_with('{') {
            return Err(BodyError::NotJson("expected a JSON object".into()));
        }
        let top: TopLevel =
            serde_json::from_str(text).map_err(|e| BodyError::NotJson(e.to_string()))?;
        let raw_model = top.model.ok_or(BodyError::NoModel)?;
        let value = raw_model.get();
        if !value.starts_with('"') {
            return Err(BodyError::ModelNotString);
        }
        let model: String = serde_json::from_str(value).map_err(|_| BodyError::ModelNotString)?;
        // `value` borrows from `text`, so the pointer difference is its offset in the body.
        let start = value.as_ptr() as usize - text.as_ptr() as usize;
        let stream = top.stream.map(|s| s.get() == "true").unwrap_or(false);
        Ok(RequestBody {
            model_span: (start, start + value.len()),
            bytes,
            model,
            stream,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The body with `model` set to `model_id`, as pieces that share the original buffer.
    pub fn with_model(&self, model_id: &str) -> SplicedBody {
        let encoded = serde_json::to_string(model_id).unwrap_or_else(|_| "\"\"".to_string());
        SplicedBody {
            parts: [
                self.bytes.slice(..self.model_span.0),
                Bytes::from(encoded),
                self.bytes.slice(self.model_span.1..),
            ],
        }
    }
}

/// A rewritten body, kept as pieces to be written one after the other.
#[derive(Debug, Clone)]
pub struct SplicedBody {
    pub parts: [Bytes; 3],
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
}
