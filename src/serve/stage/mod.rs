//! Request features around the attempt loop, one module each: what runs before routing's
//! answer is sought (a cache lookup, an idempotency claim) and after it (keeping the answer,
//! settling the key). `serve::proxy` runs them in order; each store they use sits behind its
//! own async seam (`serve::cache`, `serve::idempotency`).

pub mod cache;
pub mod idempotency;
