//! What no log level may print: trace records of the libraries below twinroute.
//!
//! Pingora's trace records print whole request headers (`Writing request header: ...` with the
//! provider key twinroute injected, the client's token in `{:?}` of every request) and response
//! bodies (prompts' answers). A user who turns `RUST_LOG=trace` on to debug an incident must not
//! get every key and token in the log, so trace records of every target but twinroute's own are
//! dropped, whatever `RUST_LOG` says; their debug records (clean, and tested so) still pass.
//! env_logger's directives cannot promise this: a longer target in `RUST_LOG`
//! (`pingora_core::protocols::http::v1::client=trace`) wins over any shorter cap.

use log::{Level, Log, Metadata, Record};

/// Whether a record may be written at all (before `RUST_LOG`'s own filter).
pub fn passes(level: Level, target: &str) -> bool {
    level < Level::Trace || target == "twinroute" || target.starts_with("twinroute::")
}

/// env_logger's logger behind the rule above.
pub struct Redacted(pub env_logger::Logger);

impl Log for Redacted {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        passes(m.level(), m.target()) && self.0.enabled(m)
    }

    fn log(&self, r: &Record<'_>) {
        if passes(r.level(), r.target()) {
            self.0.log(r);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Install `b`'s logger behind the rule (as `Builder::init` would install it bare).
pub fn install(mut b: env_logger::Builder) {
    let logger = b.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Redacted(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_passes_only_for_twinroute() {
        assert!(passes(Level::Trace, "twinroute"));
        assert!(passes(Level::Trace, "twinroute::serve::forward"));
        assert!(!passes(Level::Trace, "twinroute_other"));
        assert!(!passes(
            Level::Trace,
            "pingora_core::protocols::http::v1::client"
        ));
        assert!(!passes(Level::Trace, "pingora_core::apps::http_app"));
        assert!(!passes(Level::Trace, "rustls::client"));
        for level in [Level::Debug, Level::Info, Level::Warn, Level::Error] {
            assert!(passes(level, "pingora_core::protocols::http::v1::client"));
        }
    }
}
