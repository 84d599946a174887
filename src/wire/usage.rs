//! Token usage read from responses as they stream past, for metrics, cost and the access log.
//!
//! No JSON parse of the answer: each chunk is scanned for the usage keys both wire formats use
//! (`prompt_tokens`/`completion_tokens`, `input_tokens`/`output_tokens`), keeping the last value
//! seen. That covers a JSON answer's `usage`, OpenAI's final usage chunk, and Anthropic's
//! `message_start` + cumulative `message_delta`. Keys inside a JSON string are escaped (`\"`), so
//! a completion that talks about tokens is not mistaken for usage.

use memchr::memmem;

const KEYS: [(&[u8], Kind); 4] = [
    (b"\"prompt_tokens\":", Kind::Input),
    (b"\"input_tokens\":", Kind::Input),
    (b"\"completion_tokens\":", Kind::Output),
    (b"\"output_tokens\":", Kind::Output),
];

/// Searchers built once: building one per response showed up in profiles.
static FINDERS: std::sync::LazyLock<Vec<memmem::Finder<'static>>> =
    std::sync::LazyLock::new(|| KEYS.iter().map(|(k, _)| memmem::Finder::new(*k)).collect());

/// Bytes of the previous chunk kept so a key split across two reads is still found.
const CARRY: usize = 48;

#[derive(Clone, Copy)]
enum Kind {
    Input,
    Output,
}

#[derive(Debug, Default, Clone)]
pub struct UsageScanner {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    carry: Vec<u8>,
}

impl UsageScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.carry.is_empty() {
            let mut seam = self.carry.clone();
            seam.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            self.scan(&seam);
        }
        self.scan(chunk);
        // Keep the last CARRY bytes of everything seen so far (chunks may be tiny).
        if chunk.len() >= CARRY {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - CARRY..]);
        } else {
            self.carry.extend_from_slice(chunk);
            let excess = self.carry.len().saturating_sub(CARRY);
            self.carry.drain(..excess);
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for (finder, (key, kind)) in FINDERS.iter().zip(KEYS) {
            for pos in finder.find_iter(buf) {
                if pos > 0 && buf[pos - 1] == b'\\' {
                    continue;
                }
                let rest = &buf[pos + key.len()..];
                let ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
                let digits = rest[ws..].iter().take_while(|b| b.is_ascii_digit()).count();
                // A number cut at the end of the buffer is read again at the seam.
                if digits == 0 || ws + digits == rest.len() {
                    continue;
                }
                let n = rest[ws..ws + digits].iter().try_fold(0u64, |n, d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                });
                if let Some(n) = n {
                    match kind {
                        Kind::Input => self.input_tokens = Some(n),
                        Kind::Output => self.output_tokens = Some(n),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::mock::sse_events;

    fn scan_in_pieces(text: &str, piece: usize) -> UsageScanner {
        let mut s = UsageScanner::default();
        for c in text.as_bytes().chunks(piece) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn openai_json_and_stream() {
        let json = r#"{"choices":[{"message":{"content":"I used \"prompt_tokens\": 999"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        for piece in [1, 3, 7, 64, 4096] {
            let s = scan_in_pieces(json, piece);
            assert_eq!(
                (s.input_tokens, s.output_tokens),
                (Some(12), Some(5)),
                "piece {piece}"
            );
        }
        let stream = sse_events("m", false, 9).concat();
        let s = scan_in_pieces(&stream, 13);
        assert_eq!((s.input_tokens, s.output_tokens), (Some(12), Some(9)));
    }

    #[test]
    fn anthropic_stream_takes_the_cumulative_output() {
        let stream = sse_events("m", true, 6).concat();
        for piece in [5, 50, 1000] {
            let s = scan_in_pieces(&stream, piece);
            assert_eq!(
                (s.input_tokens, s.output_tokens),
                (Some(12), Some(6)),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn nothing_found() {
        let s = scan_in_pieces(r#"{"data":[{"embedding":[0.1]}]}"#, 4);
        assert_eq!((s.input_tokens, s.output_tokens), (None, None));
    }
}
