//! What twinroute tells its operator: Prometheus metrics and the access log. Plain records that
//! serve/ fills; nothing here decides or does I/O on the request path.

pub mod access_log;
pub mod metrics;
