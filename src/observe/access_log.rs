//! One structured line per request: who asked for what, who served it, every attempt with its
//! failover reason, status, latency. Never a prompt, a completion, a header value or a key.

use crate::model::LogFormat;
use crate::observe::log_writer;
use serde::Serialize;
use std::cell::RefCell;
use std::io::Write;
use std::time::{Instant, SystemTime};

#[derive(Debug, Clone, Serialize)]
pub struct AttemptLog {
    pub provider: String,
    pub model: String,
    /// `None` when this attempt produced the answer.
    pub reason: Option<&'static str>,
    pub status: Option<u16>,
    pub ms: u64,
}

#[derive(Debug, Serialize)]
pub struct RequestLog {
    pub request_id: String,
    #[serde(skip)]
    pub start: Instant,
    pub endpoint: &'static str,
    pub requested_model: Option<String>,
    pub model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub attempts: Vec<AttemptLog>,
    pub status: u16,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub stream: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// Health turned every candidate away and one was tried anyway.
    pub fail_open: bool,
    /// Candidates routing left out because of health, as `provider:reason` when the provider's
    /// endpoints are out, `provider/model:reason` when only that model is out there.
    pub skipped: Vec<String>,
    /// The per-feature route the request matched.
    pub route: Option<String>,
    /// `canonical;grade=g` when a closest equivalent answered instead of a twin.
    pub degraded: Option<String>,
    /// Parameters removed for the offering that answered.
    pub dropped_params: Vec<String>,
    /// Handled under `zero_retention` (no pooling, connection closed, body wiped).
    pub zero_retention: bool,
    /// `client->provider` when the answer was translated between wire formats.
    pub translated: Option<&'static str>,
    /// A stream that broke after its first content: `completed:<provider>` when another
    /// candidate completed it, `failed:<provider>` when it ended with the error event.
    pub stream_recovery: Option<String>,
    /// Answered from another request with the same `Idempotency-Key`.
    pub idempotent_replay: bool,
    /// The team the client token names (`teams`): its name, never the token.
    pub team: Option<String>,
    /// The prompt cache's part: `hit`, `miss`, `stale` or `bypass`.
    pub cache: Option<&'static str>,
    /// The background job this request was queued as (or, for the drain's own request, runs).
    pub queued: Option<String>,
    /// The client's connection failed (it closed, reset or stopped reading) before the answer
    /// was complete: a cancelled stream, not a failure of the proxy or the provider.
    pub client_left: bool,
    pub error: Option<String>,
}

impl RequestLog {
    pub fn new(request_id: String) -> RequestLog {
        RequestLog {
            request_id,
            start: Instant::now(),
            endpoint: "-",
            requested_model: None,
            model: None,
            served_model: None,
            provider: None,
            attempts: Vec::new(),
            status: 0,
            latency_ms: 0,
            ttfb_ms: None,
            stream: false,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            fail_open: false,
            skipped: Vec::new(),
            route: None,
            degraded: None,
            dropped_params: Vec::new(),
            zero_retention: false,
            translated: None,
            stream_recovery: None,
            idempotent_replay: false,
            team: None,
            cache: None,
            queued: None,
            client_left: false,
            error: None,
        }
    }

    pub fn render(&self, format: LogFormat) -> String {
        let mut line = Vec::with_capacity(256);
        self.render_into(format, &mut line);
        String::from_utf8(line).unwrap_or_default()
    }

    /// Log this request's access line (target `twinroute::access`, level info). When the log
    /// writer takes lines directly, the line is formatted as env_logger formats it, into a
    /// buffer this thread reuses, and appended to the writer's buffer: no allocation, and none
    /// of env_logger's per-record formatting (callgrind: about half of the line's cost).
    pub fn emit(&self, format: LogFormat) {
        if !log::log_enabled!(target: TARGET, log::Level::Info) {
            return;
        }
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        // Formatted here only when the writer will take it; else once, by env_logger.
        let written = log_writer::takes_direct()
            && LINE.with_borrow_mut(|line| {
                line.clear();
                if write_prefix(line, SystemTime::now()).is_err() {
                    return false;
                }
                let msg = line.len();
                self.render_into(format, line);
                // env_logger indents the lines of a multi-line message; none is expected (values
                // are escaped), but such a line would take env_logger's way.
                if line[msg..].contains(&b'\n') {
                    return false;
                }
                line.push(b'\n');
                log_writer::append_line(line)
            });
        if !written {
            log::info!(target: TARGET, "{}", self.render(format));
        }
    }

    fn render_into(&self, format: LogFormat, s: &mut Vec<u8>) {
        match format {
            LogFormat::Json => {
                let _ = serde_json::to_writer(&mut *s, self);
            }
            LogFormat::Text => {
                let _ = write!(
                    s,
                    "request id={} endpoint={} status={} latency_ms={}",
                    self.request_id, self.endpoint, self.status, self.latency_ms
                );
                let opt = |s: &mut Vec<u8>, k: &str, v: &Option<String>| {
                    if let Some(v) = v {
                        let _ = write!(s, " {k}=");
                        quoted(s, v);
                    }
                };
                opt(s, "requested_model", &self.requested_model);
                opt(s, "model", &self.model);
                opt(s, "served_model", &self.served_model);
                opt(s, "provider", &self.provider);
                opt(s, "route", &self.route);
                opt(s, "degraded", &self.degraded);
                if !self.dropped_params.is_empty() {
                    s.extend_from_slice(b" dropped_params=");
                    quoted(s, &self.dropped_params.join(","));
                }
                if let Some(t) = self.ttfb_ms {
                    let _ = write!(s, " ttfb_ms={t}");
                }
                let _ = write!(s, " attempts={}", self.attempts.len());
                let failovers: Vec<String> = self
                    .attempts
                    .iter()
                    .filter_map(|a| a.reason.map(|r| format!("{}:{}", a.provider, r)))
                    .collect();
                if !failovers.is_empty() {
                    s.extend_from_slice(b" failovers=");
                    quoted(s, &failovers.join(","));
                }
                if self.stream {
                    s.extend_from_slice(b" stream=true");
                }
                if !self.skipped.is_empty() {
                    s.extend_from_slice(b" skipped=");
                    quoted(s, &self.skipped.join(","));
                }
                if self.fail_open {
                    s.extend_from_slice(b" fail_open=true");
                }
                if self.zero_retention {
                    s.extend_from_slice(b" zero_retention=true");
                }
                if let Some(c) = self.cache {
                    let _ = write!(s, " cache={c}");
                }
                if self.idempotent_replay {
                    s.extend_from_slice(b" idempotent_replay=true");
                }
                opt(s, "queued", &self.queued);
                opt(s, "team", &self.team);
                if let Some(r) = &self.stream_recovery {
                    let _ = write!(s, " stream_recovery={r}");
                }
                if let Some(t) = self.translated {
                    let _ = write!(s, " translated={t}");
                }
                if let (Some(i), Some(o)) = (self.input_tokens, self.output_tokens) {
                    let _ = write!(s, " tokens_in={i} tokens_out={o}");
                }
                if let Some(c) = self.cost_usd {
                    let _ = write!(s, " cost_usd={c:.6}");
                }
                if self.client_left {
                    s.extend_from_slice(b" client_left=true");
                }
                opt(s, "error", &self.error);
            }
        }
    }
}

/// The access line's log target, as `RUST_LOG` names it.
pub const TARGET: &str = "twinroute::access";

/// What env_logger writes before a message (`format_timestamp_millis`, no colour):
/// `[2026-12-04T05:35:00.123Z INFO  twinroute::access] `.
fn write_prefix(line: &mut Vec<u8>, now: SystemTime) -> std::io::Result<()> {
    let ts = jiff::Timestamp::try_from(now).map_err(std::io::Error::other)?;
    write!(line, "[{ts:.3} INFO  {TARGET}] ")
}

/// `v` as `{v:?}` writes it, without the formatter's per-character escaping when nothing needs
/// escaping (printable ASCII without `"` or `\`: the common case, ids and names).
fn quoted(s: &mut Vec<u8>, v: &str) {
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        s.push(b'"');
        s.extend_from_slice(v.as_bytes());
        s.push(b'"');
    } else {
        let _ = write!(s, "{v:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// env_logger's pipe target, collected.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sample() -> RequestLog {
        let mut l = RequestLog::new("req-1".into());
        l.endpoint = "chat";
        l.status = 200;
        l.model = Some("llama \"70b\"".into());
        l.provider = Some("groq".into());
        l.error = Some("upstream said: é\t\u{7f}".into());
        l.attempts.push(AttemptLog {
            provider: "a".into(),
            model: "m".into(),
            reason: Some("timeout"),
            status: None,
            ms: 3,
        });
        l
    }

    /// The line `emit` writes itself is byte for byte the line env_logger (as the proxy
    /// configures it) writes for the same message, timestamp aside.
    #[test]
    fn direct_line_matches_env_logger_format() {
        let sink = Sink::default();
        let logger = env_logger::Builder::new()
            .parse_filters("info")
            .format_timestamp_millis()
            .target(env_logger::Target::Pipe(Box::new(sink.clone())))
            .build();
        let msg = sample().render(LogFormat::Text);
        log::Log::log(
            &logger,
            &log::Record::builder()
                .args(format_args!("{msg}"))
                .level(log::Level::Info)
                .target(TARGET)
                .build(),
        );
        let theirs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut ours = Vec::new();
        write_prefix(&mut ours, SystemTime::now()).unwrap();
        sample().render_into(LogFormat::Text, &mut ours);
        ours.push(b'\n');
        let ours = String::from_utf8(ours).unwrap();
        // `[` + 24 characters of timestamp (`2026-12-04T05:35:00.123Z`).
        let stamp = |s: &str| (s[1..25].to_string(), format!("[{}", &s[25..]));
        let ((t1, rest1), (t2, rest2)) = (stamp(&theirs), stamp(&ours));
        assert_eq!(rest1, rest2);
        for t in [t1, t2] {
            assert!(
                t.parse::<jiff::Timestamp>().is_ok() && t.ends_with('Z'),
                "{t}"
            );
            assert_eq!(t.len(), 24, "{t}");
        }
    }

    #[test]
    fn quoting_is_debug_formatting() {
        for v in [
            "",
            "plain-id_1.2:3",
            "with \"quotes\"",
            "back\\slash",
            "tab\tnewline\n",
            "é ünïcode 模型",
            "\u{7f}\u{1b}[31m",
            "zero\u{200b}width",
            "'single'",
        ] {
            let mut s = Vec::new();
            quoted(&mut s, v);
            assert_eq!(String::from_utf8(s).unwrap(), format!("{v:?}"));
        }
    }
}
