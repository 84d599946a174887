//! Commands beside `run`: `check` (the static routing table, warnings, live credential and
//! listing checks) and `demo` (the proxy on built-in mock providers).

pub mod check;
pub mod demo;
