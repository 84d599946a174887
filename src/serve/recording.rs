//! An answer as it was written to the client: its header, then its body chunks, up to a bound.
//! The prompt cache keeps what one saw, and the in-process idempotency store shares one with
//! the duplicates that follow its leader (`serve::idempotency::memory`).

use crate::decide::idempotency::followable;
use crate::serve::downstream::Tap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// What a recording weighs before its answer is known.
const IN_FLIGHT_WEIGHT: u32 = 1024;

/// A response header as recorded: the status and every header, in order.
pub type Head = (u16, Vec<(HeaderName, HeaderValue)>);

/// One step of an answer as its writer wrote it: what a follower is sent, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerEvent {
    Head(Head),
    Chunk(Bytes),
    End(Ending),
}

/// How a recorded answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The whole answer was written.
    Complete,
    /// It broke off (its client left, the upstream failed mid-answer), or outgrew what may be
    /// kept.
    Abandoned,
}

pub struct Recording {
    max_bytes: usize,
    state: Mutex<RecState>,
    /// Bumped at every change, so readers wait without polling.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct RecState {
    head: Option<Head>,
    chunks: Vec<Bytes>,
    bytes: usize,
    end: Option<Ending>,
}

/// Where a reader of a recording is: how much of it it has taken.
#[derive(Debug, Default)]
pub struct Cursor {
    head_taken: bool,
    chunks_taken: usize,
}

impl Recording {
    /// A recording of at most `max_bytes` of body (more: abandoned, its chunks let go).
    pub fn new(max_bytes: usize) -> Recording {
        Recording {
            max_bytes,
            state: Mutex::new(RecState::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The writer is done: `complete` when its whole answer was written.
    pub fn finish(&self, complete: bool) {
        let mut g = self.lock();
        if g.end.is_none() {
            g.end = Some(if complete {
                Ending::Complete
            } else {
                Ending::Abandoned
            });
        }
        drop(g);
        self.bump();
    }

    /// Whether the answer was written whole (and fitted the bound).
    pub fn complete(&self) -> bool {
        self.lock().end == Some(Ending::Complete)
    }

    /// The whole body written, when it was written whole.
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        let g = self.lock();
        (g.end == Some(Ending::Complete)).then(|| g.chunks.concat())
    }

    /// The status the writer answered with, once it did.
    pub fn status(&self) -> Option<u16> {
        self.lock().head.as_ref().map(|(s, _)| *s)
    }

    /// Whether a duplicate may still follow this answer (`decide::idempotency::followable`).
    pub fn followable(&self) -> bool {
        let g = self.lock();
        followable(
            g.head.as_ref().map(|(s, _)| *s),
            g.end == Some(Ending::Abandoned),
        )
    }

    /// Bytes it weighs in a store: its body and header, at least `IN_FLIGHT_WEIGHT`.
    pub fn weight(&self) -> u32 {
        let g = self.lock();
        let head: usize = g.head.as_ref().map_or(0, |(_, h)| {
            h.iter().map(|(k, v)| k.as_str().len() + v.len() + 8).sum()
        });
        (g.bytes + head)
            .max(IN_FLIGHT_WEIGHT as usize)
            .min(u32::MAX as usize) as u32
    }

    /// Wakes when the recording changes after the last `borrow_and_update`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The next event a reader at `cursor` has not taken, if any is written yet. An answer
    /// abandoned before the reader took its header ends there: nothing of it is shared.
    pub fn take(&self, cursor: &mut Cursor) -> Option<AnswerEvent> {
        let g = self.lock();
        if !cursor.head_taken {
            if g.end == Some(Ending::Abandoned) {
                return Some(AnswerEvent::End(Ending::Abandoned));
            }
            let head = g.head.clone()?;
            cursor.head_taken = true;
            return Some(AnswerEvent::Head(head));
        }
        if let Some(c) = g.chunks.get(cursor.chunks_taken) {
            cursor.chunks_taken += 1;
            return Some(AnswerEvent::Chunk(c.clone()));
        }
        g.end.map(AnswerEvent::End)
    }
}

/// The answer as its writer writes it (`serve::downstream`).
impl Tap for Recording {
    fn head(&self, h: &ResponseHeader) {
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.lock().head = Some((h.status.as_u16(), headers));
        self.bump();
    }

    fn body(&self, b: &Bytes) {
        if b.is_empty() {
            return;
        }
        let mut g = self.lock();
        if g.end.is_some() {
            return;
        }
        g.bytes += b.len();
        if g.bytes > self.max_bytes {
            g.end = Some(Ending::Abandoned);
            g.chunks.clear();
        } else {
            g.chunks.push(b.clone());
        }
        drop(g);
        self.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_takes_the_head_then_each_chunk_then_the_end() {
        let r = Recording::new(16);
        let mut c = Cursor::default();
        assert_eq!(r.take(&mut c), None);
        r.head(&ResponseHeader::build(200, None).unwrap());
        r.body(&Bytes::from_static(b"ab"));
        assert!(matches!(r.take(&mut c), Some(AnswerEvent::Head((200, _)))));
        assert_eq!(
            r.take(&mut c),
            Some(AnswerEvent::Chunk(Bytes::from_static(b"ab")))
        );
        assert_eq!(r.take(&mut c), None);
        r.finish(true);
        assert_eq!(r.take(&mut c), Some(AnswerEvent::End(Ending::Complete)));
        assert_eq!(r.body_bytes().as_deref(), Some(&b"ab"[..]));
    }

    #[test]
    fn an_answer_over_its_bound_is_abandoned_and_let_go() {
        let r = Recording::new(3);
        r.head(&ResponseHeader::build(200, None).unwrap());
        r.body(&Bytes::from_static(b"abcd"));
        let mut c = Cursor::default();
        assert_eq!(r.take(&mut c), Some(AnswerEvent::End(Ending::Abandoned)));
        assert!(!r.complete());
        assert_eq!(r.body_bytes(), None);
    }
}
