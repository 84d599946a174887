//! What twinroute tells its operator: Prometheus metrics and the access log, and what no log
//! level may print (`redact_log`). Plain records that
//! serve/ fills; nothing here decides or does I/O on the request path (the log's writes happen
//! on `log_writer`'s thread).

pub mod access_log;
pub mod log_writer;
pub mod metrics;
pub mod redact_log;
