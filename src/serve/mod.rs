//! The Pingora glue, and the only layer that serves sockets: the proxy phases (`proxy`), the
//! attempt executor and relay (`forward`), the commit point (`commit`), the header guard below
//! Pingora's parser, the admin listener, server assembly, reload and drain, the probe service,
//! the background queue (`queue`) and its drain (`drain`), a request's part in it
//! (`background`), the memory trimmer (`trim`), and the shared state they hold (`state`).

pub mod admin;
pub mod background;
pub mod cache;
pub mod commit;
pub mod credentials;
pub mod downstream;
pub mod drain;
pub mod fleet;
pub mod forward;
pub mod header_guard;
pub mod idempotency;
pub mod names;
pub mod probe;
pub mod proxy;
pub mod queue;
pub mod recording;
pub mod refresh;
pub mod reload;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod stage;
pub mod state;
pub mod team;
pub mod trim;
