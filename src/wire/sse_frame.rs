//! Server-sent event framing: where each event of a byte stream ends, whatever the read
//! boundaries, in linear time and bounded memory.
//!
//! An event ends at a blank line (`\n\n`, `\r\n\r\n` or `\r\r`). A provider that never sends one
//! (one endless `data:` line) must cost neither quadratic CPU (rescanning what was already
//! scanned, or copying the growing event once per read) nor unbounded memory: the framer scans
//! each byte once, appends each byte once, and refuses an event over its limit
//! (`max_stream_event_bytes`). What an event *means* is `wire::stream_event`.

use bytes::{Bytes, BytesMut};

/// Where the event starting at `from` ends, and the separator's length.
pub fn event_end_at(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        // Only `\n` and `\r` can start a separator: memchr skips the event's text in bulk.
        let at = memchr::memchr2(b'\n', b'\r', &buf[i..])?;
        i += at;
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some((i, 2)),
            b'\r' if buf[i..].starts_with(b"\r\n\r\n") => return Some((i, 4)),
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some((i, 2)),
            _ => {}
        }
        i += 1;
    }
    None
}

/// An event held past this size gets room up to the limit in one step ...
const GROW_IN_ONE_STEP_PAST: usize = 64 * 1024;

/// ... when the limit is at most this (a larger limit grows by doubling, as `BytesMut` does).
const ONE_STEP_AT_MOST: usize = 64 << 20;

/// One event among the bytes a `feed` returned: `start..data_end` is the event without its
/// blank line, `start..next` with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub data_end: usize,
    pub next: usize,
}

/// An event grew past the limit before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge {
    pub limit: usize,
}

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an upstream stream event exceeded max_stream_event_bytes ({} bytes)",
            self.limit
        )
    }
}

/// Splits a byte stream into events. `feed` returns the complete events a read finished, as
/// spans of one `Bytes` (consecutive events back to back, so a caller can pass a run of them on
/// as one slice); the bytes of an event not yet complete wait inside.
#[derive(Debug)]
pub struct SseFramer {
    partial: BytesMut,
    /// How much of `partial` is known to hold no separator (scanning resumes 3 bytes before its
    /// end, where a separator split across two reads may start).
    scanned: usize,
    max_event: usize,
    spans: Vec<Span>,
    /// Bytes the scanner was given to look at so far (counted where each scan starts): the
    /// linearity the tests hold it to.
    #[cfg(test)]
    work: usize,
}

impl SseFramer {
    /// A framer refusing any event over `max_event` bytes.
    pub fn new(max_event: usize) -> SseFramer {
        SseFramer {
            partial: BytesMut::new(),
            scanned: 0,
            max_event,
            spans: Vec::new(),
            #[cfg(test)]
            work: 0,
        }
    }

    /// Feed one read. `Ok((bytes, spans))`: the complete events among what was read so far (the
    /// spans index `bytes`); `Err` when the event under way grew past the limit (the framer is
    /// then spent: the stream is broken).
    pub fn feed(&mut self, chunk: Bytes) -> Result<(Bytes, &[Span]), EventTooLarge> {
        self.spans.clear();
        let too_large = EventTooLarge {
            limit: self.max_event,
        };
        if self.partial.is_empty() {
            #[cfg(test)]
            {
                self.work += chunk.len();
            }
            // Nothing held: events are slices of the read itself, never copied.
            let mut pos = 0;
            while let Some((end, sep)) = event_end_at(&chunk, pos) {
                self.spans.push(Span {
                    start: pos,
                    data_end: end,
                    next: end + sep,
                });
                pos = end + sep;
            }
            if self.spans.iter().any(|s| s.next - s.start > self.max_event)
                || chunk.len() - pos > self.max_event
            {
                return Err(too_large);
            }
            self.partial.extend_from_slice(&chunk[pos..]);
            self.scanned = self.partial.len();
            return Ok((chunk.slice(..pos), &self.spans));
        }
        // An event spans reads: the read is appended (each byte copied once) and the scan
        // resumes where it stopped, never from the event's start.
        let mut from = self.scanned.saturating_sub(3);
        let needed = self.partial.len() + chunk.len();
        if needed > self.partial.capacity()
            && self.partial.len() > GROW_IN_ONE_STEP_PAST
            && self.max_event <= ONE_STEP_AT_MOST
        {
            // A long event: room up to the limit at once, not by doubling, so the buffers left
            // behind by each doubling (and the pages they touched) do not add up to twice the
            // limit. Untouched room costs no memory.
            let room = self.max_event.saturating_add(chunk.len()).max(needed);
            self.partial.reserve(room - self.partial.len());
        }
        self.partial.extend_from_slice(&chunk);
        // What the scan below covers: from where the last one stopped to the end.
        #[cfg(test)]
        {
            self.work += self.partial.len() - from;
        }
        let mut last = 0;
        while let Some((end, sep)) = event_end_at(&self.partial, from) {
            self.spans.push(Span {
                start: last,
                data_end: end,
                next: end + sep,
            });
            last = end + sep;
            from = last;
        }
        if self.spans.iter().any(|s| s.next - s.start > self.max_event)
            || self.partial.len() - last > self.max_event
        {
            self.partial = BytesMut::new();
            return Err(too_large);
        }
        let done = self.partial.split_to(last).freeze();
        self.scanned = self.partial.len();
        Ok((done, &self.spans))
    }

    /// As `feed`, for bytes the caller only borrows: they are appended to the held buffer
    /// (reused from read to read, so no allocation per read once it has grown).
    pub fn feed_slice(&mut self, bytes: &[u8]) -> Result<(Bytes, &[Span]), EventTooLarge> {
        // Appended first, then scanned as the slow path scans a held event (from where the last
        // scan stopped; `scanned` is 0 when nothing is held).
        self.partial.extend_from_slice(bytes);
        self.feed(Bytes::new())
    }

    /// Bytes of an event that never ended (the stream stopped mid-event).
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `reads` fed one read at a time, as text without the blank line.
    fn framed(reads: &[&[u8]], max: usize) -> Result<Vec<String>, EventTooLarge> {
        let mut f = SseFramer::new(max);
        let mut out = Vec::new();
        for r in reads {
            let (bytes, spans) = f.feed(Bytes::copy_from_slice(r))?;
            for s in spans {
                out.push(String::from_utf8_lossy(&bytes[s.start..s.data_end]).into_owned());
            }
        }
        Ok(out)
    }

    #[test]
    fn events_are_found_whatever_the_read_boundaries() {
        let whole: &[u8] = b"data: a\n\nevent: x\r\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n";
        let want = vec!["data: a", "event: x\r\ndata: b", "data: c", "data: d"];
        assert_eq!(framed(&[whole], 1 << 20).unwrap(), want);
        // Every split into two and three reads gives the same events.
        for i in 0..=whole.len() {
            assert_eq!(
                framed(&[&whole[..i], &whole[i..]], 1 << 20).unwrap(),
                want,
                "{i}"
            );
            for j in i..=whole.len() {
                let reads = [&whole[..i], &whole[i..j], &whole[j..]];
                assert_eq!(framed(&reads, 1 << 20).unwrap(), want, "{i} {j}");
            }
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(framed(&bytes, 1 << 20).unwrap(), want);
    }

    #[test]
    fn an_event_over_the_limit_is_refused_in_any_read() {
        assert!(framed(&[b"data: 12345\n\n"], 64).is_ok());
        assert_eq!(
            framed(&[b"data: 12345\n\n"], 8),
            Err(EventTooLarge { limit: 8 }),
            "complete in one read"
        );
        let line = vec![b'x'; 100];
        assert_eq!(
            framed(&[b"data: ", &line], 64),
            Err(EventTooLarge { limit: 64 }),
            "incomplete"
        );
        let pieces: Vec<&[u8]> = line.chunks(7).collect();
        let mut reads: Vec<&[u8]> = vec![b"data: ok\n\ndata: "];
        reads.extend(pieces);
        assert_eq!(framed(&reads, 64), Err(EventTooLarge { limit: 64 }));
    }

    #[test]
    fn a_long_line_is_scanned_and_copied_once() {
        // 8 MiB in 16 KiB reads: each byte is scanned once (plus the three before each read, where
        // a separator may be split). The quadratic version scanned ~4 GiB here.
        let mut f = SseFramer::new(64 << 20);
        let read = Bytes::from(vec![b'x'; 16 << 10]);
        assert!(f.feed(Bytes::from_static(b"data: ")).is_ok());
        for _ in 0..512 {
            let (done, spans) = f.feed(read.clone()).unwrap();
            assert!(done.is_empty() && spans.is_empty());
        }
        let (done, spans) = f.feed(Bytes::from_static(b"\n\n")).unwrap();
        assert_eq!(spans.len(), 1);
        let total = 6 + (8 << 20) + 2;
        assert_eq!(done.len(), total);
        assert!(
            f.work <= total + 3 * 514,
            "scanned {} bytes of {total}",
            f.work
        );
        assert_eq!(f.pending(), 0);
    }
}
