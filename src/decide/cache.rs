//! Prompt-cache decisions: what makes two requests the same (the key), whether a kept answer is
//! fresh, stale (servable only when every candidate fails: RFC 5861's stale-if-error) or gone,
//! what the client's `Cache-Control` allows, and which answers may be kept.
//!
//! Pure: the store and the serving are `serve::cache`; folding a stream into an answer and back
//! is `wire::answer`.

use crate::decide::route::Acceptable;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The cache key: SHA-256 over the canonical request and what scopes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

/// What one cache lookup is about: the parts of the key besides the body.
#[derive(Debug, Clone, Copy)]
pub struct KeyScope<'a> {
    /// The canonical model requested (an alias and the model's own name are the same model).
    pub model: &'a str,
    /// The per-feature route, when one matched.
    pub route: Option<&'a str>,
    /// The client's endpoint (its wire format).
    pub endpoint: &'a str,
    /// The client's identity (`decide::idempotency::scope`).
    pub identity: [u8; 32],
    /// Which answers the request accepts (equivalents, pinned provider, region): an answer kept
    /// for one request is never served to a request that would not have taken it.
    pub acceptable: Acceptable<'a>,
}

/// The key of a request: its parsed body with keys sorted, without `stream` and
/// `stream_options` (a streamed and a whole answer are the same answer) and with `model`
/// replaced by the canonical model, plus the scope. `None` when the body is not a JSON object.
pub fn key(body: &Value, scope: &KeyScope<'_>) -> Option<CacheKey> {
    let members = body.as_object()?;
    let mut h = HashWriter(Sha256::new());
    for part in [scope.model, scope.route.unwrap_or(""), scope.endpoint] {
        h.0.update(part.as_bytes());
        h.0.update([0]);
    }
    h.0.update(scope.identity);
    scope.acceptable.digest_into(&mut h.0);
    // serde_json's map is ordered by key: the same request gives the same bytes whatever order
    // the client wrote its keys in. Each member is serialized straight into the hash: the
    // prompt is neither cloned nor rendered into a string first.
    for (k, v) in members {
        if matches!(k.as_str(), "stream" | "stream_options" | "model") {
            continue;
        }
        serde_json::to_writer(&mut h, k).ok()?;
        h.0.update([b':']);
        serde_json::to_writer(&mut h, v).ok()?;
        h.0.update([b',']);
    }
    Some(CacheKey(h.0.finalize().into()))
}

/// Serializes into the hash as it goes.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a kept answer stands at a given age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past its TTL but within `stale_if_error`: only when every candidate fails.
    Stale,
    Gone,
}

pub fn freshness(age: Duration, ttl: Duration, stale_if_error: Duration) -> Freshness {
    if age < ttl {
        Freshness::Fresh
    } else if age < ttl + stale_if_error {
        Freshness::Stale
    } else {
        Freshness::Gone
    }
}

/// What the client's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Normal,
    /// `no-cache`: do not answer from the cache; the new answer may be kept.
    NoCache,
    /// `no-store`: neither read nor keep.
    NoStore,
}

impl Directive {
    pub fn parse(cache_control: Option<&[u8]>) -> Directive {
        let Some(v) = cache_control.and_then(|v| std::str::from_utf8(v).ok()) else {
            return Directive::Normal;
        };
        let has = |d: &str| {
            v.split(',').any(|p| {
                p.trim()
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .eq_ignore_ascii_case(d)
            })
        };
        if has("no-store") {
            Directive::NoStore
        } else if has("no-cache") {
            Directive::NoCache
        } else {
            Directive::Normal
        }
    }
}

/// Whether an answer may be kept: a complete success with content, and tool calls only when
/// the policy says they may be.
pub fn cacheable(
    status: u16,
    complete: bool,
    non_empty: bool,
    tool_calls: bool,
    tool_calls_allowed: bool,
) -> bool {
    (200..300).contains(&status) && complete && non_empty && (!tool_calls || tool_calls_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> KeyScope<'static> {
        KeyScope {
            model: "m",
            route: None,
            endpoint: "chat_completions",
            identity: [0; 32],
            acceptable: Acceptable {
                allow_equivalents: false,
                pin: None,
                region: None,
                require_params: false,
            },
        }
    }

    #[test]
    fn the_key_ignores_order_stream_and_the_models_name() {
        let a = json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
        let b = json!({"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"});
        assert_eq!(key(&a, &scope()), key(&b, &scope()));
        let c = json!({"temperature": 1, "messages": [{"content": "hi", "role": "user"}]});
        assert_ne!(key(&a, &scope()), key(&c, &scope()));
        let other_tenant = KeyScope {
            identity: [1; 32],
            ..scope()
        };
        assert_ne!(key(&a, &scope()), key(&a, &other_tenant));
        let other_route = KeyScope {
            route: Some("batch"),
            ..scope()
        };
        assert_ne!(key(&a, &scope()), key(&a, &other_route));
        // Whatever narrows which answers are acceptable is another entry.
        let base = scope().acceptable;
        for acceptable in [
            Acceptable {
                allow_equivalents: true,
                ..base
            },
            Acceptable {
                pin: Some("oa2"),
                ..base
            },
            Acceptable {
                region: Some("eu"),
                ..base
            },
            Acceptable {
                require_params: true,
                ..base
            },
        ] {
            let narrowed = KeyScope {
                acceptable,
                ..scope()
            };
            assert_ne!(key(&a, &scope()), key(&a, &narrowed), "{acceptable:?}");
        }
        // A pin and a region of the same text are not the same constraint.
        let pin = KeyScope {
            acceptable: Acceptable {
                pin: Some("x"),
                ..base
            },
            ..scope()
        };
        let region = KeyScope {
            acceptable: Acceptable {
                region: Some("x"),
                ..base
            },
            ..scope()
        };
        assert_ne!(key(&a, &pin), key(&a, &region));
        assert_eq!(key(&json!([1]), &scope()), None);
    }

    #[test]
    fn freshness_directives_and_what_is_kept() {
        let s = Duration::from_secs;
        assert_eq!(freshness(s(5), s(10), s(60)), Freshness::Fresh);
        assert_eq!(freshness(s(10), s(10), s(60)), Freshness::Stale);
        assert_eq!(freshness(s(70), s(10), s(60)), Freshness::Gone);
        assert_eq!(freshness(s(10), s(10), s(0)), Freshness::Gone);
        assert_eq!(Directive::parse(None), Directive::Normal);
        assert_eq!(Directive::parse(Some(b"No-Cache")), Directive::NoCache);
        assert_eq!(
            Directive::parse(Some(b"max-age=0, no-store")),
            Directive::NoStore
        );
        assert!(cacheable(200, true, true, false, false));
        assert!(!cacheable(200, true, false, false, false), "empty");
        assert!(!cacheable(200, false, true, false, false), "broken");
        assert!(!cacheable(500, true, true, false, false), "error");
        assert!(!cacheable(200, true, true, true, false), "tool calls");
        assert!(cacheable(200, true, true, true, true));
    }
}
