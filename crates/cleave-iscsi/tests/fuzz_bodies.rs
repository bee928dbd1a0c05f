//! The fuzz targets' bodies (`fuzz/fuzz_targets`) on stable, over random and mutated input.

use cleave_iscsi::fuzzing;
use cleave_iscsi::pdu::{Digests, Opcode, Pdu};
use proptest::prelude::*;

fn valid_pdus() -> Vec<Vec<u8>> {
    let mut cmd = Pdu::new(Opcode::ScsiCommand);
    cmd.set_flags(0xa1);
    cmd.set_u32(20, 512);
    cmd.bhs[32] = 0x2a;
    cmd.bhs[40] = 1;
    cmd.data = vec![1u8; 512].into();
    let mut text = Pdu::new(Opcode::TextRequest);
    text.set_flags(0x80);
    text.data = b"SendTargets=All\0".to_vec().into();
    let d = Digests { header: true, data: true };
    vec![cmd.encode(Digests::default()).to_vec(), cmd.encode(d).to_vec(), text.encode(d).to_vec()]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::parse_pdu(&data);
    }

    #[test]
    fn parse_mutated_pdus(which in 0usize..3, at: usize, flip: u8) {
        let mut b = valid_pdus().swap_remove(which);
        let i = at % b.len();
        b[i] ^= flip;
        fuzzing::parse_pdu(&b);
    }

    /// Full feature phase fed a valid PDU with a byte changed, then random bytes.
    #[test]
    fn session_on_mutated_input(which in 0usize..3, at: usize, flip: u8, tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = valid_pdus().swap_remove(which);
        let i = at % b.len();
        b[i] ^= flip;
        let input = [&[0u8][..], &b, &tail].concat();
        rt().block_on(fuzzing::session(&input));
    }

    #[test]
    fn session_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        rt().block_on(fuzzing::session(&data));
    }
}
