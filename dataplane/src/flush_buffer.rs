//! The bounded buffer between the request path and a telemetry worker (access-log
//! sinks, trace exporters): a request pushes under a short lock and wakes no one; the
//! worker takes everything every [`FLUSH`]. Measured: waking a writer per entry (a
//! channel) cost the sidecar pair a third of its throughput.
//!
//! [`LineBuffer`] is the same for text sinks (an access-log file or TCP collector): the
//! request path appends its rendered line, so what crosses to the worker thread is one
//! string, not an entry of a dozen allocations. Measured: freeing those entries on the
//! worker thread (glibc locks the arena of the thread that allocated each block)
//! contended with the request path and cost the sidecar pair a third of its throughput.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Items a buffer holds between two flushes; more are refused (and counted as dropped
/// by the caller).
pub(crate) const CAPACITY: usize = 4096;

/// How often a worker takes its buffer (Envoy flushes access-log files every second).
pub(crate) const FLUSH: Duration = Duration::from_millis(50);

pub(crate) struct FlushBuffer<T> {
    items: Mutex<Vec<T>>,
    /// Cleared by [`FlushBuffer::close`]: the worker takes what is left and ends.
    open: AtomicBool,
}

impl<T> FlushBuffer<T> {
    pub(crate) fn new() -> FlushBuffer<T> {
        FlushBuffer {
            items: Mutex::new(Vec::new()),
            open: AtomicBool::new(true),
        }
    }

    /// Adds `item`; `false` (and nothing added) when the buffer is full.
    pub(crate) fn push(&self, item: T) -> bool {
        let mut items = self.items.lock().expect("flush buffer lock");
        if items.len() >= CAPACITY {
            return false;
        }
        items.push(item);
        true
    }

    /// Says the producer is gone.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Everything buffered, into `batch` (empty before); `false` once closed and
    /// nothing is left.
    pub(crate) fn take(&self, batch: &mut Vec<T>) -> bool {
        let open = self.open.load(Ordering::Acquire);
        std::mem::swap(&mut *self.items.lock().expect("flush buffer lock"), batch);
        open || !batch.is_empty()
    }
}

/// Bytes of rendered lines a [`LineBuffer`] holds between two flushes; past it lines are
/// refused (and counted as dropped by the caller): 80 MiB/s at [`FLUSH`].
pub(crate) const LINE_BYTES: usize = 4 << 20;

/// Rendered lines between the request path and a text sink's worker.
pub(crate) struct LineBuffer {
    /// The lines, and how many.
    lines: Mutex<(String, u64)>,
    open: AtomicBool,
}

impl LineBuffer {
    pub(crate) fn new() -> LineBuffer {
        LineBuffer {
            lines: Mutex::new((String::new(), 0)),
            open: AtomicBool::new(true),
        }
    }

    /// Appends `line` (newline-terminated); `false` (and nothing added) when the buffer
    /// is full.
    pub(crate) fn push(&self, line: &str) -> bool {
        let mut lines = self.lines.lock().expect("line buffer lock");
        if lines.0.len() + line.len() > LINE_BYTES {
            return false;
        }
        lines.0.push_str(line);
        lines.1 += 1;
        true
    }

    /// Says the producer is gone.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Everything buffered, into `text` (empty before; its capacity is kept for the
    /// next lines), and how many lines; `None` once closed and nothing is left.
    pub(crate) fn take(&self, text: &mut String) -> Option<u64> {
        let open = self.open.load(Ordering::Acquire);
        let n = {
            let mut lines = self.lines.lock().expect("line buffer lock");
            std::mem::swap(&mut lines.0, text);
            std::mem::take(&mut lines.1)
        };
        (open || n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_refuses_and_a_closed_one_ends_once_drained() {
        let b = FlushBuffer::new();
        for i in 0..CAPACITY {
            assert!(b.push(i));
        }
        assert!(!b.push(CAPACITY), "full");
        b.close();
        let mut batch = Vec::new();
        assert!(b.take(&mut batch), "what is left is still taken");
        assert_eq!(batch.len(), CAPACITY);
        batch.clear();
        assert!(!b.take(&mut batch), "closed and empty: the worker ends");
    }

    #[test]
    fn a_line_buffer_holds_whole_lines_up_to_its_bytes_and_ends_once_drained() {
        let b = LineBuffer::new();
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..LINE_BYTES / 1024 {
            assert!(b.push(&line));
        }
        assert!(!b.push("y\n"), "full");
        let mut text = String::new();
        assert_eq!(b.take(&mut text), Some((LINE_BYTES / 1024) as u64));
        assert_eq!(text.len(), LINE_BYTES);
        text.clear();
        assert!(b.push("after\n"), "room again once taken");
        b.close();
        assert_eq!(b.take(&mut text), Some(1), "what is left is still taken");
        assert_eq!(text, "after\n");
        text.clear();
        assert_eq!(b.take(&mut text), None, "closed and empty: the worker ends");
    }
}
