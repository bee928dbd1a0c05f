//! Byte-range locks: changes to overlapping bytes take turns.

use std::ops::Range;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, Range<u64>)>>,
    next: std::sync::atomic::AtomicU64,
    released: Notify,
}

/// Releases its range when dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl RangeLocks {
    pub async fn lock(&self, range: Range<u64>) -> RangeGuard<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut held = self.held.lock().expect("not poisoned");
                if !held.iter().any(|(_, r)| r.start < range.end && range.start < r.end) {
                    held.push((id, range));
                    return RangeGuard { locks: self, id };
                }
            }
            released.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.locks.held.lock().expect("not poisoned").retain(|(id, _)| *id != self.id);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn overlapping_ranges_take_turns() {
        let l = Arc::new(RangeLocks::default());
        let a = l.lock(0..10).await;
        let _b = l.lock(10..20).await; // no overlap: no wait
        let l2 = l.clone();
        let waiting = tokio::spawn(async move {
            let _c = l2.lock(5..6).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        waiting.await.unwrap();
    }
}
