//! Network plumbing below health and serve: name resolution for upstream hosts, and one-shot
//! HTTP exchanges off the request path (token endpoints).

pub mod fetch;
pub mod resolve;
