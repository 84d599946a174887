//! The Pingora glue, and the only layer that serves sockets: the proxy phases (`proxy`), the
//! attempt executor and relay (`forward`), the commit point (`commit`), the header guard below Pingora's parser, the admin
//! listener, server assembly, reload and drain, the probe service, and the shared state they
//! hold (`state`).

pub mod admin;
pub mod cache;
pub mod commit;
pub mod credentials;
pub mod downstream;
pub mod forward;
pub mod header_guard;
pub mod idempotency;
pub mod probe;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod server;
pub mod state;
