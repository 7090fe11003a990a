//! Where a forward pass spends its time, by kind of operation (`idefics2 bench --profile`).
//!
//! Off by default (one atomic load per scope). When on, each [`scope`] waits for the device before
//! and after its work, and its time counts to its kind exclusively: a scope inside another pauses
//! the outer one, so the kinds add up to the profiled time, and what no scope covers (reshapes,
//! residual additions, embeddings, mask building, kernel launches in between) is the remainder.
//! The waits themselves cost time on a GPU (a readback each), so a profiled run is slower than a
//! plain one; the bench prints both.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use web_time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, (f64, usize)>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// Open scopes of this thread: kind and when it last (re)started counting.
    static STACK: RefCell<Vec<(&'static str, Instant)>> = const { RefCell::new(Vec::new()) };
}

/// Turns profiling on or off, and clears what was recorded.
pub fn enable(on: bool) {
    lock().clear();
    ENABLED.store(on, Ordering::SeqCst);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The recorded `(kind, seconds, calls)`, largest first; clears the table.
pub fn take() -> Vec<(&'static str, f64, usize)> {
    let mut rows: Vec<_> = std::mem::take(&mut *lock())
        .into_iter()
        .map(|(kind, (seconds, calls))| (kind, seconds, calls))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<&'static str, (f64, usize)>> {
    TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record(kind: &'static str, seconds: f64, call: bool) {
    let mut table = lock();
    let entry = table.entry(kind).or_insert((0.0, 0));
    entry.0 += seconds;
    entry.1 += usize::from(call);
}

/// Waits for the device's queued work (a no-op on the CPU device, which runs eagerly).
fn sync(device: &Device) {
    let _ = device.sync();
}

/// Counts the time until the guard drops to `kind` (exclusive of nested scopes), when profiling is
/// on; `None` otherwise. `device` is asked for only then: the scopes sit on the decode path.
pub fn scope(kind: &'static str, device: impl FnOnce() -> Device) -> Option<Scope> {
    if !enabled() {
        return None;
    }
    let device = device();
    sync(&device);
    let now = Instant::now();
    STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        if let Some((outer, since)) = stack.last() {
            record(outer, now.duration_since(*since).as_secs_f64(), false);
        }
        stack.push((kind, now));
    });
    Some(Scope { device })
}

/// See [`scope`].
pub struct Scope {
    device: Device,
}

impl Drop for Scope {
    fn drop(&mut self) {
        sync(&self.device);
        let now = Instant::now();
        STACK.with(|stack| {
            let mut stack = stack.borrow_mut();
            if let Some((kind, since)) = stack.pop() {
                record(kind, now.duration_since(since).as_secs_f64(), true);
            }
            if let Some((_, since)) = stack.last_mut() {
                *since = now;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_count_exclusively() {
        let device = Device::flex();
        enable(true);
        {
            let _outer = scope("outer", || device.clone());
            std::thread::sleep(std::time::Duration::from_millis(10));
            {
                let _inner = scope("inner", || device.clone());
                std::thread::sleep(std::time::Duration::from_millis(60));
            }
        }
        let rows = take();
        enable(false);
        let get = |kind: &str| rows.iter().find(|r| r.0 == kind).copied();
        let (outer, inner) = (get("outer").expect("outer"), get("inner").expect("inner"));
        assert_eq!((outer.2, inner.2), (1, 1));
        // The outer scope does not count the inner one's 60 ms.
        assert!(inner.1 >= 0.06 && outer.1 >= 0.01, "{outer:?} {inner:?}");
        assert!(outer.1 < inner.1, "{outer:?} {inner:?}");
        assert!(scope("off", || device.clone()).is_none());
    }
}
