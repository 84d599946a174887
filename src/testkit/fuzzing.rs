//! Properties of the code that reads hostile input, as functions of arbitrary bytes that panic
//! when a property fails. The cargo-fuzz targets in `fuzz/` call them, and `tests/fuzz_corpus.rs`
//! replays every saved corpus input through them on each `cargo test`, so a crash found once
//! stays fixed. Not product API.

use crate::serve::header_guard::{HeaderScan, Scan};
use crate::wire::body::RequestBody;
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeMap;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Model IDs the rewrite is asked to splice in: empty, plain, one that needs escaping, non-ASCII.
const NEW_IDS: [&str; 4] = ["", "org/model-1", "quo\"te\\n\u{7}", "modèle-β"];

/// Members `drop_params` may name (never `model`: the config refuses that).
const DROPPABLE: [&str; 4] = ["temperature", "messages", "stream", "a"];

/// The body scanner and rewriter: byte 0 picks the new model ID and the members to drop, the rest
/// is the client's body. Never panics; when the body is JSON that `serde_json::Value` accepts and
/// twinroute accepts it too, the rewrite is that same JSON value with `model` replaced and the
/// dropped members gone (every occurrence: a duplicate left behind would still reach a provider
/// that refuses it).
pub fn body_rewrite(data: &[u8]) {
    let Some((&ctl, raw)) = data.split_first() else {
        return;
    };
    let new_id = NEW_IDS[(ctl & 3) as usize];
    let drop: Vec<&str> = DROPPABLE
        .iter()
        .enumerate()
        .filter(|(i, _)| ctl >> (2 + i) & 1 == 1)
        .map(|(_, k)| *k)
        .collect();
    let parsed = match RequestBody::parse(Bytes::copy_from_slice(raw)) {
        Ok(b) => b,
        Err(e) => {
            assert!(!e.message().is_empty(), "a rejection says why");
            return;
        }
    };
    let out = parsed.rewrite(new_id, &drop).to_vec();
    let json = raw.strip_prefix(UTF8_BOM).unwrap_or(raw);
    let Ok(mut want) = serde_json::from_slice::<Value>(json) else {
        // Skipped values are checked by syntax only (serde does not range-check a skipped
        // `1E999999`), so only inputs `Value` takes have an expected output.
        return;
    };
    assert_eq!(
        want.get("model").and_then(Value::as_str),
        Some(parsed.model.as_str()),
        "the model read is the one the JSON holds"
    );
    let got: Value = match serde_json::from_slice(&out) {
        Ok(v) => v,
        Err(e) => panic!(
            "rewrite of valid JSON is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    if let Some(obj) = want.as_object_mut() {
        obj.insert("model".into(), Value::String(new_id.into()));
        for k in &drop {
            obj.remove(*k);
        }
    }
    assert_eq!(
        got, want,
        "rewrite changed more than model and the dropped members"
    );
}

/// The header guard's scanner: byte 0 picks a read size (1–8 bytes) and a size limit, the rest is
/// what a client sends. Feeding it in pieces gives the same verdict at the same byte count as
/// feeding it whole, and where httparse (Pingora's parser) finds a complete header of `n` bytes,
/// the scanner finds its end at exactly `n`: earlier would let a slow body escape nothing, later
/// would time a body as if it were header.
pub fn header_scan(data: &[u8]) {
    let Some((&ctl, raw)) = data.split_first() else {
        return;
    };
    let piece = (ctl & 7) as usize + 1;
    let limit = 16 + ((ctl >> 3) as usize) * 64;

    let mut whole = HeaderScan::new(limit);
    let verdict = whole.feed(raw);
    let mut pieces = HeaderScan::new(limit);
    let mut piecewise = Scan::Incomplete;
    for chunk in raw.chunks(piece) {
        piecewise = pieces.feed(chunk);
        if piecewise != Scan::Incomplete {
            break;
        }
    }
    assert_eq!(
        verdict, piecewise,
        "verdict depends on how the bytes were split"
    );
    if verdict == Scan::Complete {
        assert_eq!(whole.seen(), pieces.seen(), "end found at different bytes");
    }

    let mut unlimited = HeaderScan::new(usize::MAX);
    let end = (unlimited.feed(raw) == Scan::Complete).then(|| unlimited.seen());
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(n)) = req.parse(raw) {
        assert_eq!(end, Some(n), "httparse found the header end at {n}");
        assert_eq!(verdict == Scan::Complete, n <= limit, "limit {limit}");
    }
    if let Some(n) = end {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        assert!(
            !matches!(req.parse(&raw[..n]), Ok(httparse::Status::Partial)),
            "scanner ended the header at {n} where httparse wants more"
        );
    }
}

/// The config loader never panics on any text, and a config it accepts keeps the loader's
/// promises: provider names are unique (a lookup by name finds that very provider) and the
/// connection limits are inside their documented ranges.
pub fn config_load(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let env: BTreeMap<String, String> = [("K", "sk-fuzz-key"), ("T", "tok-a,tok-b")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(config) = crate::config::parse(&text, &env) {
        let limits = config.connection_limits();
        assert!((1024..=1 << 20).contains(&limits.max_header_bytes));
        for t in [
            limits.header_timeout,
            limits.idle_timeout,
            limits.send_timeout,
        ] {
            assert!(!t.is_zero(), "a zero timeout was accepted");
        }
        for p in &config.providers {
            let found = config.provider_by_name(&p.name).expect("named provider");
            assert!(
                std::sync::Arc::ptr_eq(found, p),
                "two providers named {:?}",
                p.name
            );
        }
    }
}

/// The SSE framing every upstream stream goes through (`wire::sse_frame`, `EventGuard`): byte 0
/// picks the event limit and byte 1 where the rest is split into two reads. Never panics; the
/// events found are the same whatever the split (the framing depends on the bytes, not on how
/// they arrived); no event handed on is larger than the limit, and once an event outgrows it the
/// framer says so instead of holding more; the guard takes the same bytes without panicking.
pub fn sse_scan(data: &[u8]) {
    use crate::model::endpoint::Family;
    use crate::wire::sse_frame::SseFramer;
    use crate::wire::stream_event::EventGuard;
    let Some((&[limit_ctl, split_ctl], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limit = 16 + (limit_ctl as usize) * 8;
    let split = if rest.is_empty() {
        0
    } else {
        split_ctl as usize % (rest.len() + 1)
    };
    let frame = |reads: &[&[u8]]| -> (Vec<Vec<u8>>, bool) {
        let mut f = SseFramer::new(limit);
        let mut events = Vec::new();
        for r in reads {
            match f.feed(Bytes::copy_from_slice(r)) {
                Ok((buf, spans)) => {
                    let mut at = 0;
                    for s in spans {
                        assert_eq!(s.start, at, "events are back to back");
                        assert!(s.start <= s.data_end && s.data_end < s.next);
                        assert!(s.next - s.start <= limit, "an event over the limit");
                        events.push(buf[s.start..s.data_end].to_vec());
                        at = s.next;
                    }
                    assert_eq!(at, buf.len(), "nothing handed on but whole events");
                    assert!(f.pending() <= limit, "held more than the limit");
                }
                Err(_) => return (events, true),
            }
        }
        (events, false)
    };
    let (whole, whole_over) = frame(&[rest]);
    let (parts, parts_over) = frame(&[&rest[..split], &rest[split..]]);
    if !whole_over && !parts_over {
        assert_eq!(whole, parts, "the split changed the events");
    } else {
        // Refused either way, with the same events before the refusal at most.
        assert!(whole_over || parts_over);
        let n = whole.len().min(parts.len());
        assert_eq!(whole[..n], parts[..n]);
    }
    for family in [Family::OpenAi, Family::Anthropic] {
        let mut g = EventGuard::new(family, limit);
        let mut out = Vec::new();
        for r in [&rest[..split], &rest[split..]] {
            if g.feed(Bytes::copy_from_slice(r), &mut out).is_err() {
                break;
            }
        }
        let _ = g.end();
    }
}

/// The job store's record decoder (`serve::queue::decode`, what `load` reads after a restart,
/// from a file that may be damaged or edited). Never panics; a record it accepts has a valid job
/// id, a path twinroute serves and valid headers, and survives encoding and decoding unchanged.
pub fn job_decode(data: &[u8]) {
    use crate::serve::queue::{decode, encode};
    if let Ok(meta) = decode(data) {
        assert!(crate::decide::queue::valid_job_id(&meta.id));
        assert!(crate::model::endpoint::Endpoint::from_path(&meta.path).is_some());
        for (k, v) in &meta.headers {
            assert!(http::HeaderName::from_bytes(k.as_bytes()).is_ok());
            assert!(http::HeaderValue::from_str(v).is_ok());
        }
        let again = decode(&encode(&meta).expect("an accepted record encodes"))
            .expect("an encoded record decodes");
        assert_eq!(again, meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_hold_on_hand_picked_inputs() {
        for body in [
            &b"\x0f{\"model\":\"m\",\"temperature\":1,\"a\":[1,{\"model\":2}],\"temperature\":2}"[..],
            b"\x00\xEF\xBB\xBF{\"model\":\"m\"}",
            b"\x03 { \"messages\" : [] , \"model\" : \"x\\u0041\" } ",
            b"\x01[1,2]",
            b"",
        ] {
            body_rewrite(body);
        }
        for head in [
            &b"\x07GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"[..],
            b"\x00\r\n\r\nGET / HTTP/1.1\nA: b\n\n",
            b"\xffPOST /v1/messages HTTP/1.1\r\n",
        ] {
            header_scan(head);
        }
        config_load(b"providers: []");
    }
}
