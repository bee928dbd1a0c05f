//! The changes a forwarding gateway had acknowledged since the last FLUSH it saw succeed.
//! A primary that dies, or is fenced, may lose them (they sat in its cache); they are sent
//! again, in order, to the next primary before anything else, so that no write acknowledged
//! to a host and then flushed is lost with the primary that took it.

use std::collections::VecDeque;

use cleave_mirror::Op;

/// Acknowledged changes not yet covered by a FLUSH, oldest first.
#[derive(Default)]
pub(crate) struct Unflushed {
    changes: VecDeque<(u64, Op)>,
    next: u64,
    bytes: u64,
}

impl Unflushed {
    /// Keeps an acknowledged change.
    pub(crate) fn record(&mut self, op: Op) {
        self.bytes += op.payload();
        self.changes.push_back((self.next, op));
        self.next += 1;
    }

    /// A mark taken before a FLUSH is sent: the FLUSH covers every change recorded before it.
    pub(crate) fn mark(&self) -> u64 {
        self.next
    }

    /// A FLUSH sent at `mark` succeeded: the changes before the mark are durable.
    pub(crate) fn flushed(&mut self, mark: u64) {
        while self.changes.front().is_some_and(|(seq, _)| *seq < mark) {
            if let Some((_, op)) = self.changes.pop_front() {
                self.bytes -= op.payload();
            }
        }
    }

    /// Bytes of data kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes to send again, oldest first.
    pub(crate) fn replay(&self) -> Vec<Op> {
        self.changes.iter().map(|(_, op)| op.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn write(offset: u64, byte: u8) -> Op {
        Op::Write { offset, data: Bytes::from(vec![byte; 4096]), fua: false }
    }

    #[test]
    fn a_flush_drops_only_what_was_acknowledged_before_it_was_sent() {
        let mut u = Unflushed::default();
        u.record(write(0, 1));
        u.record(Op::Trim { offset: 8192, len: 4096 });
        let mark = u.mark();
        // Acknowledged while the FLUSH was on its way: not covered by it.
        u.record(write(4096, 2));
        assert_eq!(u.bytes(), 8192);
        u.flushed(mark);
        assert_eq!(u.replay(), vec![write(4096, 2)]);
        assert_eq!(u.bytes(), 4096);
        u.flushed(u.mark());
        assert!(u.is_empty());
        assert_eq!(u.bytes(), 0);
    }

    #[test]
    fn changes_are_sent_again_in_the_order_they_were_acknowledged() {
        let mut u = Unflushed::default();
        u.record(write(0, 1));
        u.record(write(0, 2));
        u.record(Op::Zero { offset: 0, len: 512, fua: false });
        let again = u.replay();
        assert_eq!(again, vec![write(0, 1), write(0, 2), Op::Zero { offset: 0, len: 512, fua: false }]);
        // An older FLUSH's mark drops nothing newer.
        u.flushed(0);
        assert_eq!(u.replay().len(), 3);
    }
}
