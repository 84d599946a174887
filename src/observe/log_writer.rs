//! The log's last step off the request path: a formatted line (the access line above all) is
//! appended to one shared buffer — a lock and a copy, no allocation; only the first line of a
//! batch wakes the writer — and one writer thread writes that buffer to stderr a few
//! milliseconds later, one syscall for many lines, instead of each request thread taking
//! stderr's lock and writing its own line. With nothing to write the writer sleeps.
//!
//! Nothing is dropped: when the buffer is full the request waits for the writer (an audit log
//! loses nothing) and `twinroute_log_waits_total` counts it. `drain` writes what is left before
//! the process exits. `RUST_LOG` works as before: this is only env_logger's target.

use crate::observe::metrics::METRICS;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How often the writer empties the buffer.
const PERIOD: Duration = Duration::from_millis(5);

struct Buffer {
    lines: Mutex<Vec<u8>>,
    /// Signalled when the writer took the buffer (room again).
    room: Condvar,
    /// Signalled when a line lands in an empty buffer: the writer sleeps on it while there is
    /// nothing to write, so an idle sidecar does not wake 200 times a second.
    ready: Condvar,
    capacity: usize,
}

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write out what is buffered now.
    fn write_out(&self, spare: &mut Vec<u8>) {
        {
            let mut g = self.lock();
            if g.is_empty() {
                return;
            }
            std::mem::swap(&mut *g, spare);
        }
        self.room.notify_all();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(spare);
        let _ = err.flush();
        spare.clear();
    }
}

static BUFFER: OnceLock<Arc<Buffer>> = OnceLock::new();

/// env_logger's pipe: each formatted record is appended to the shared buffer.
pub struct BufferWriter {
    buffer: Arc<Buffer>,
}

/// Start the writer thread with a buffer of `capacity` bytes; returns the pipe for
/// env_logger's `Target::Pipe`.
pub fn start(capacity: usize) -> std::io::Result<BufferWriter> {
    let buffer = Arc::new(Buffer {
        lines: Mutex::new(Vec::with_capacity(capacity)),
        room: Condvar::new(),
        ready: Condvar::new(),
        capacity,
    });
    let b = buffer.clone();
    std::thread::Builder::new()
        .name("twinroute-log".into())
        .spawn(move || {
            let mut spare = Vec::with_capacity(b.capacity);
            loop {
                {
                    let mut g = b.lock();
                    while g.is_empty() {
                        g = b.ready.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                }
                // The first line of a batch woke the writer; the lines of the next few
                // milliseconds go out with it, one write for all.
                std::thread::sleep(PERIOD);
                b.write_out(&mut spare);
            }
        })?;
    let _ = BUFFER.set(buffer.clone());
    Ok(BufferWriter { buffer })
}

impl Buffer {
    /// Append one or more whole lines, waiting while the buffer has no room for them.
    fn append(&self, bytes: &[u8]) {
        let mut g = self.lock();
        if !g.is_empty() && g.len() + bytes.len() > self.capacity {
            METRICS.log_waits.inc();
            while !g.is_empty() && g.len() + bytes.len() > self.capacity {
                g = self.room.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        }
        let was_empty = g.is_empty();
        g.extend_from_slice(bytes);
        drop(g);
        if was_empty {
            self.ready.notify_one();
        }
    }
}

/// Whether lines may come straight to the buffer, not through env_logger (`allow_direct`).
static DIRECT: AtomicBool = AtomicBool::new(false);

/// Let `append_line` take lines that bypass env_logger's formatting. The caller knows env_logger
/// does nothing to a line beyond formatting it: its filter has no message regex (`RUST_LOG`
/// with `/`), which only env_logger can apply.
pub fn allow_direct() {
    DIRECT.store(true, Ordering::Relaxed);
}

/// Whether the writer runs and takes lines that bypass env_logger (`append_line`).
pub fn takes_direct() -> bool {
    BUFFER.get().is_some() && DIRECT.load(Ordering::Relaxed)
}

/// Append a line formatted as env_logger would have formatted it, when the writer takes direct
/// lines (`takes_direct`); `false` leaves the line to env_logger.
pub fn append_line(line: &[u8]) -> bool {
    match BUFFER.get() {
        Some(b) if DIRECT.load(Ordering::Relaxed) => {
            b.append(line);
            true
        }
        _ => false,
    }
}

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.append(bytes);
        Ok(bytes.len())
    }

    /// env_logger flushes after every record: the writer flushes after every batch.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write out every line logged so far, on this thread: before the process exits.
pub fn drain() {
    if let Some(b) = BUFFER.get() {
        b.write_out(&mut Vec::new());
    }
}
