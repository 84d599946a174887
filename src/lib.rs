//! twinroute: a localhost egress proxy that keeps LLM API calls alive across providers.
//!
//! The crate is layered; each layer imports only the layers below it (ARCHITECTURE.md, checked
//! by `scripts/layers.py` in CI):
//!
//! ```text
//! serve/    Pingora glue: proxy phases, the attempt executor, relay, header guard, admin,
//!           server, reload, the probe service           (the only layer that serves sockets)
//! observe/  metrics and the access log: records serve/ fills
//! health/   breakers, cooldowns, EWMA, pools, probes: the one consumer of health signals
//! decide/   pure decisions: candidate order, outcome classification, backoff, the attempt
//!           state machine
//! wire/     one module per API family: auth, paths, error shapes, stream events, usage, the
//!           body scanner/splicer
//! config/   the YAML file's serde mirror, built into model/ with key-path errors
//! net/      DNS resolution shared by requests and probes
//! model/    plain data: ids, catalog, policy, providers, endpoints       (imports nothing)
//! ```
//!
//! Beside the product: `cmd/` (the `check` and `demo` commands), `testkit/` (mock providers, a
//! small client, fuzz properties: test doubles the demo and the tests share) and `inject/` (the
//! Kubernetes admission webhook, a separate program that imports nothing of the proxy).

pub mod cmd;
pub mod config;
pub mod decide;
pub mod health;
pub mod inject;
pub mod model;
pub mod net;
pub mod observe;
pub mod serve;
pub mod testkit;
pub mod wire;
