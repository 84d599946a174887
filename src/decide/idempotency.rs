//! `Idempotency-Key` decisions (the IETF httpapi draft's header): which keys are valid, whose
//! they are, what makes two requests "the same", and which answers may be kept.
//!
//! Pure: the store that keeps answers and shares one in flight is `serve::idempotency`.

use crate::decide::route::Acceptable;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A key as a client sent it, scoped to the client's identity so one tenant can never read
/// another's answer under the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedKey {
    /// SHA-256 of the client's token (never the token itself), or zeros without client tokens.
    pub scope: [u8; 32],
    pub key: String,
}

/// What identifies a request's content: the route it went to and its exact body.
pub type Fingerprint = [u8; 32];

/// Why a key is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong,
    NotPrintable,
}

impl KeyError {
    pub fn message(self) -> &'static str {
        match self {
            KeyError::Empty => "Idempotency-Key is empty",
            KeyError::TooLong => "Idempotency-Key is longer than 255 characters",
            KeyError::NotPrintable => "Idempotency-Key must be printable ASCII",
        }
    }
}

/// The key from the header's value: an sf-string (`"..."`, as the draft specifies) or, as many
/// clients send it, the bare token; 1 to 255 printable ASCII characters.
pub fn parse_key(value: &[u8]) -> Result<&str, KeyError> {
    let v = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    if v.is_empty() {
        return Err(KeyError::Empty);
    }
    if v.len() > 255 {
        return Err(KeyError::TooLong);
    }
    if !v.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(KeyError::NotPrintable);
    }
    std::str::from_utf8(v).map_err(|_| KeyError::NotPrintable)
}

/// The installation's secret that keys client scopes (`serve::secrets`): 32 random bytes, kept
/// under `state_dir` (mode 0600) so scopes of queued jobs survive a restart, else per process.
/// Holds the HMAC keyed once (its key schedule), cloned per scope.
#[derive(Clone)]
pub struct ScopeSecret {
    mac: Hmac<Sha256>,
}

impl ScopeSecret {
    pub fn new(key: [u8; 32]) -> ScopeSecret {
        ScopeSecret {
            // HMAC takes a key of any length: no error is possible here.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
        }
    }
}

impl std::fmt::Debug for ScopeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScopeSecret(<redacted>)")
    }
}

/// The scope of a client identity: HMAC-SHA256 of its token under the installation's secret,
/// so a store (or a job file on disk) never holds the token, and a copy of the store cannot be
/// used to test guesses of a token offline, as a bare hash could.
pub fn scope(secret: &ScopeSecret, client_token: Option<&[u8]>) -> [u8; 32] {
    match client_token {
        Some(t) => {
            let mut mac = secret.mac.clone();
            mac.update(t);
            mac.finalize().into_bytes().into()
        }
        None => [0; 32],
    }
}

/// The same key with another body, on another route (path or per-feature route), or accepting
/// other answers (equivalents, pinned provider, region) is another request: 422, never the
/// first request's answer.
pub fn fingerprint(
    path: &str,
    route: Option<&str>,
    acceptable: &Acceptable<'_>,
    body: &[u8],
) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    h.update([0]);
    match route {
        None => h.update([0]),
        Some(r) => {
            h.update([1]);
            h.update(r.as_bytes());
            h.update([0]);
        }
    }
    acceptable.digest_into(&mut h);
    h.update(body);
    h.finalize().into()
}

/// Whether an answer may be replayed for its key: only a complete success. A failure is not
/// kept (a retry after a 5xx is a new try), nor a stream that broke.
pub fn storable(status: u16, complete: bool) -> bool {
    (200..300).contains(&status) && complete
}

/// Whether a duplicate may follow an answer already under way or written: not once it is known
/// to be a failure (a status other than 2xx, or an answer that broke off). Such an answer is not
/// kept, and the leader's client can hold all of it before the leader lets the key go: a retry in
/// that moment is a new try, not a replay of the failure.
pub fn followable(status: Option<u16>, broke_off: bool) -> bool {
    !broke_off && status.is_none_or(|s| (200..300).contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key(b"\"abc-123\""), Ok("abc-123"));
        assert_eq!(
            parse_key(b"8e03978e-40d5-43e8-bc93-6894a57f9324"),
            Ok("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(parse_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_key(b"\"\""), Err(KeyError::Empty));
        assert_eq!(parse_key(&[b'a'; 256]), Err(KeyError::TooLong));
        assert_eq!(parse_key(b"a\x01b"), Err(KeyError::NotPrintable));
        assert_eq!(parse_key("é".as_bytes()), Err(KeyError::NotPrintable));
    }

    #[test]
    fn scopes_and_fingerprints() {
        let k = ScopeSecret::new([7; 32]);
        assert_ne!(scope(&k, Some(b"tenant-a")), scope(&k, Some(b"tenant-b")));
        assert_eq!(scope(&k, None), [0; 32]);
        // Keyed: another installation's scope of the same token differs, and none is the bare
        // SHA-256 an offline guess could be checked against.
        let other = ScopeSecret::new([8; 32]);
        assert_ne!(
            scope(&k, Some(b"tenant-a")),
            scope(&other, Some(b"tenant-a"))
        );
        let bare: [u8; 32] = Sha256::digest(b"tenant-a").into();
        assert_ne!(scope(&k, Some(b"tenant-a")), bare);
        let any = Acceptable {
            allow_equivalents: false,
            pin: None,
            region: None,
            require_params: false,
        };
        let fp = |path, route, acceptable: &Acceptable<'_>, body| {
            fingerprint(path, route, acceptable, body)
        };
        assert_eq!(
            fp("/v1/x", None, &any, b"{}"),
            fp("/v1/x", None, &any, b"{}")
        );
        assert_ne!(
            fp("/v1/x", None, &any, b"{}"),
            fp("/v1/x", None, &any, b"{ }")
        );
        assert_ne!(
            fp("/v1/x", None, &any, b"{}"),
            fp("/v1/y", None, &any, b"{}")
        );
        assert_ne!(
            fp("/v1/x", None, &any, b"{}"),
            fp("/v1/x", Some("other"), &any, b"{}"),
            "another per-feature route"
        );
        let eq = Acceptable {
            allow_equivalents: true,
            ..any
        };
        assert_ne!(
            fp("/v1/x", None, &any, b"{}"),
            fp("/v1/x", None, &eq, b"{}")
        );
        assert!(storable(200, true));
        assert!(!storable(200, false));
        assert!(!storable(503, true));
        assert!(!storable(400, true));
        assert!(followable(None, false), "in flight, no header yet");
        assert!(followable(Some(200), false));
        assert!(!followable(Some(502), false), "a failure being written");
        assert!(!followable(Some(429), false));
        assert!(!followable(Some(200), true), "a stream that broke off");
    }
}
