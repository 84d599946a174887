//! The log's last step off the request path: every formatted line (the access line above all)
//! is handed to one writer thread through a bounded channel, and that thread writes to stderr in
//! batches — one syscall for many lines — instead of each request thread taking stderr's lock
//! and writing its own line.
//!
//! Nothing is dropped: when the channel is full the request waits for room (an audit log loses
//! nothing) and `twinroute_log_waits_total` counts it. `drain` empties the channel before the
//! process exits. `RUST_LOG` works as before: this is only env_logger's target.

use crate::observe::metrics::METRICS;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

/// Lines are written in batches of up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;

enum Msg {
    Line(Vec<u8>),
    /// Write everything before this, then say so.
    Drain(SyncSender<()>),
}

static WRITER: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// env_logger's pipe: one message per formatted record.
pub struct ChannelWriter {
    tx: SyncSender<Msg>,
}

/// Start the writer thread with room for `capacity` lines in flight; returns the pipe for
/// env_logger's `Target::Pipe`.
pub fn start(capacity: usize) -> std::io::Result<ChannelWriter> {
    let (tx, rx) = sync_channel(capacity);
    std::thread::Builder::new()
        .name("twinroute-log".into())
        .spawn(move || write_batches(rx))?;
    let _ = WRITER.set(tx.clone());
    Ok(ChannelWriter { tx })
}

fn write_batches(rx: Receiver<Msg>) {
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    let take = |m: Msg, buf: &mut Vec<u8>, acks: &mut Vec<SyncSender<()>>| match m {
        Msg::Line(l) => buf.extend_from_slice(&l),
        Msg::Drain(ack) => acks.push(ack),
    };
    while let Ok(first) = rx.recv() {
        take(first, &mut buf, &mut acks);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => take(m, &mut buf, &mut acks),
                Err(_) => break,
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&buf);
        let _ = err.flush();
        drop(err);
        buf.clear();
        for a in acks.drain(..) {
            let _ = a.send(());
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.tx.try_send(Msg::Line(bytes.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(m)) => {
                METRICS.log_waits.inc();
                if let Err(e) = self.tx.send(m) {
                    write_directly(e.0);
                }
            }
            Err(TrySendError::Disconnected(m)) => write_directly(m),
        }
        Ok(bytes.len())
    }

    /// env_logger flushes after every record: the writer thread flushes after every batch.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread is gone (it never should be): write on this thread rather than lose it.
fn write_directly(m: Msg) {
    if let Msg::Line(l) = m {
        let _ = std::io::stderr().lock().write_all(&l);
    }
}

/// Wait (up to `limit`) until every line logged so far is written: before the process exits.
pub fn drain(limit: Duration) {
    let Some(tx) = WRITER.get() else {
        return;
    };
    let (ack_tx, ack_rx) = sync_channel(1);
    if tx.send(Msg::Drain(ack_tx)).is_ok() {
        let _ = ack_rx.recv_timeout(limit);
    }
}
