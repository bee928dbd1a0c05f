//! The fuzz target's body (`fuzz/fuzz_targets/frames.rs`) on stable, over arbitrary and
//! mutated bytes: nothing panics, and what parses round-trips.

use cleave_mirror::wire::{Frame, Op};
use cleave_mirror::{backlog, control::Control, heartbeat};
use proptest::prelude::*;

fn body(data: &[u8]) {
    if let Ok(f) = Frame::parse(bytes::Bytes::copy_from_slice(data)) {
        assert_eq!(Frame::parse(f.encode().slice(4..)).unwrap(), f);
    }
    let _ = serde_json::from_slice::<Control>(data);
    if let Some((op, used)) = backlog::decode_record(data) {
        assert_eq!(&backlog::encode_record(&op)[..], &data[..used]);
    }
    let _ = heartbeat::parse(data);
}

proptest! {
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        body(&data);
    }

    /// Valid records and frames with one byte changed: refused or parsed, never a panic.
    #[test]
    fn mutated_records_and_frames(offset in 0u64..1 << 40, len in 1usize..64, at: usize, flip: u8) {
        let op = Op::Write { offset, data: vec![7; len].into(), fua: true };
        for mut b in [backlog::encode_record(&op).to_vec(), Frame::Data { id: 1, handle: 2, op: op.clone() }.encode().slice(4..).to_vec()] {
            let i = at % b.len();
            b[i] ^= flip;
            body(&b);
        }
    }
}

#[test]
fn a_damaged_journal_record_is_not_read() {
    let rec = backlog::encode_record(&Op::Trim { offset: 4096, len: 512 });
    assert!(backlog::decode_record(&rec).is_some());
    for i in 4..rec.len() {
        let mut b = rec.to_vec();
        b[i] ^= 0x40;
        assert!(backlog::decode_record(&b).is_none(), "byte {i} changed and the record still reads");
    }
}
