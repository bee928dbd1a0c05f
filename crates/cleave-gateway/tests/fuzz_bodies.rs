//! The body of the fuzz target in `crates/cleave-gateway/fuzz` (standby_log), run on stable
//! in CI: over arbitrary bytes, and over valid logs with bytes flipped, cut short or spliced
//! in, which reach past the length fields and the sums.

use bytes::Bytes;
use cleave_gateway::fuzzing;
use cleave_mirror::Op;
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..64), any::<bool>())
            .prop_map(|(offset, data, fua)| Op::Write { offset, data: Bytes::from(data), fua }),
        (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(offset, len, fua)| Op::Zero { offset, len, fua }),
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Op::Trim { offset, len }),
        Just(Op::Flush),
    ]
}

/// A valid log with a few bytes changed, then cut short or with bytes inserted.
fn mutated_log() -> impl Strategy<Value = Vec<u8>> {
    let parts = (
        prop::collection::vec(op(), 0..6),
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..16),
        0..3u8,
    );
    parts.prop_map(|(ops, flips, at, insert, how)| {
        let mut log = fuzzing::standby_log(&ops);
        if !log.is_empty() {
            for (i, x) in flips {
                let i = i.index(log.len());
                log[i] ^= x;
            }
        }
        let at = at.index(log.len() + 1);
        match how {
            0 => log.truncate(at),
            1 => {
                log.splice(at..at, insert);
            }
            _ => {}
        }
        log
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::read_standby_log(&data);
    }

    #[test]
    fn damaged_logs(log in mutated_log()) {
        fuzzing::read_standby_log(&log);
    }

    #[test]
    fn whole_logs_read_back(ops in prop::collection::vec(op(), 0..8)) {
        let log = fuzzing::standby_log(&ops);
        fuzzing::read_standby_log(&log);
        // FUA and FLUSH are the primary's business: the log keeps the changes.
        let changes: Vec<Op> = ops
            .into_iter()
            .filter_map(|op| match op {
                Op::Write { offset, data, .. } => Some(Op::Write { offset, data, fua: false }),
                Op::Zero { offset, len, .. } => Some(Op::Zero { offset, len, fua: false }),
                Op::Flush => None,
                trim => Some(trim),
            })
            .collect();
        prop_assert_eq!(fuzzing::changes_in(&log), changes);
    }
}
