//! The bounded buffer between the request path and a telemetry worker (access-log
//! sinks, trace exporters): a request pushes under a short lock and wakes no one; the
//! worker takes everything every [`FLUSH`]. Measured: waking a writer per entry (a
//! channel) cost the sidecar pair a third of its throughput.

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
}
