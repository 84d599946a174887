//! Idempotency as a request stage: claim the request's `Idempotency-Key` before the attempt
//! loop (lead, follow, or refuse); the leader settles after it. The store is
//! `serve::idempotency`.

use crate::decide::idempotency::{parse_key, Fingerprint, ScopedKey};
use crate::serve::idempotency::{Claim, IdempotencyStore};
use crate::wire::errors::{ErrorKind, GatewayError};

/// Whether a request takes part in idempotency, and its claim.
pub enum Keyed {
    /// No key (or no store, or a request whose answer may not be kept).
    No,
    /// The key header is malformed, or sent more than once.
    Invalid(GatewayError),
    Claimed(Claim),
}

/// Claim the request's `Idempotency-Key` in `store`. `scoped` gives the client's scope and the
/// request's fingerprint, asked only when the request carries a key. A request none of whose
/// answer may be kept (`keep_nothing`: zero retention) is not keyed.
pub async fn claim(
    store: &dyn IdempotencyStore,
    headers: &http::HeaderMap,
    keep_nothing: bool,
    scoped: impl FnOnce() -> ([u8; 32], Fingerprint),
) -> Keyed {
    let mut values = headers
        .get_all(&crate::serve::names::IDEMPOTENCY_KEY)
        .iter();
    let Some(value) = values.next() else {
        return Keyed::No;
    };
    if values.next().is_some() {
        // Which one the client meant is not ours to guess: the first winning silently
        // would replay an answer for a key the client may not have sent last.
        return Keyed::Invalid(GatewayError::new(
            ErrorKind::InvalidRequest,
            "send one Idempotency-Key header, not several",
        ));
    }
    if keep_nothing {
        return Keyed::No;
    }
    let key = match parse_key(value.as_bytes()) {
        Ok(k) => k.to_string(),
        Err(e) => return Keyed::Invalid(GatewayError::new(ErrorKind::InvalidRequest, e.message())),
    };
    let (scope, fp) = scoped();
    Keyed::Claimed(store.claim(&ScopedKey { scope, key }, fp).await)
}
