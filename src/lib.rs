//! twinroute: a localhost egress proxy that keeps LLM API calls alive across providers.
//!
//! Request path: `proxy` (Pingora phases) → `body` (find/splice `model`) → `catalog` (resolve)
//! → `route` (order candidates) → `forward` (attempt loop, `provider` builds each upstream
//! request, `outcome` classifies) → client. Beside it: `health` (breakers, probes, latency),
//! `metrics`, `admin`, `access_log`. `mock` and `demo` are the built-in fake providers.

pub mod access_log;
pub mod admin;
pub mod api;
pub mod backoff;
pub mod body;
pub mod catalog;
pub mod check;
pub mod client;
pub mod config;
pub mod demo;
pub mod errors;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod header_guard;
pub mod health;
pub mod inject;
pub mod metrics;
pub mod mock;
pub mod outcome;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod resolve;
pub mod route;
pub mod server;
pub mod state;
pub mod usage;
