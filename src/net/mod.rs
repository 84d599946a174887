//! Network plumbing below health and serve: name resolution for upstream hosts.

pub mod resolve;
