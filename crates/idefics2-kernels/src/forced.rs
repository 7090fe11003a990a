//! Launch settings that tests can force: on a CPU adapter they cover the paths GPUs take.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A setting forced process-wide (`None`: the kernel's own rule decides).
pub(crate) struct Forced(AtomicUsize);

impl Forced {
    pub(crate) const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Forces `value` (0 counts as not forced), or back to the automatic rule with `None`.
    pub(crate) fn set(&self, value: Option<usize>) {
        self.0.store(value.unwrap_or(0), Ordering::SeqCst);
    }

    pub(crate) fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            value => Some(value),
        }
    }
}
