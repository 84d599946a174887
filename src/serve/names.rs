//! twinroute's own header names, the client's and the answer's, in one place: as text (error
//! messages, Pingora's `insert_header` on the rare paths) and as `http`'s names for the hot path,
//! where a `&str` name is parsed on every lookup or insert.

use http::HeaderName;

pub const HDR_PROVIDER: &str = "x-twinroute-provider";
pub const HDR_STRATEGY: &str = "x-twinroute-strategy";
pub const HDR_REGION: &str = "x-twinroute-region";
pub const HDR_ALLOW_EQUIVALENTS: &str = "x-twinroute-allow-equivalents";
pub const HDR_REQUIRE_PARAMS: &str = "x-twinroute-require-parameters";
pub const HDR_ROUTE: &str = "x-twinroute-route";
pub const HDR_REQUEST_ID: &str = "x-twinroute-request-id";
pub const HDR_ATTEMPTS: &str = "x-twinroute-attempts";
pub const HDR_CACHE: &str = "x-twinroute-cache";
pub const HDR_IDEMPOTENT_REPLAY: &str = "x-twinroute-idempotent-replay";

// What a client asks with.
pub const PROVIDER: HeaderName = HeaderName::from_static(HDR_PROVIDER);
pub const STRATEGY: HeaderName = HeaderName::from_static(HDR_STRATEGY);
pub const REGION: HeaderName = HeaderName::from_static(HDR_REGION);
pub const ALLOW_EQUIVALENTS: HeaderName = HeaderName::from_static(HDR_ALLOW_EQUIVALENTS);
pub const REQUIRE_PARAMS: HeaderName = HeaderName::from_static(HDR_REQUIRE_PARAMS);
pub const ROUTE: HeaderName = HeaderName::from_static(HDR_ROUTE);
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

// What an answer says (`x-twinroute-provider` is both: the pin asked, the provider that served).
pub const MODEL: HeaderName = HeaderName::from_static("x-twinroute-model");
pub const ATTEMPTS: HeaderName = HeaderName::from_static(HDR_ATTEMPTS);
pub const REQUEST_ID: HeaderName = HeaderName::from_static(HDR_REQUEST_ID);
pub const EQUIVALENT: HeaderName = HeaderName::from_static("x-twinroute-equivalent");
pub const DROPPED_PARAMS: HeaderName = HeaderName::from_static("x-twinroute-dropped-params");
pub const CACHE: HeaderName = HeaderName::from_static(HDR_CACHE);
pub const TRANSLATED: HeaderName = HeaderName::from_static("x-twinroute-translated");
