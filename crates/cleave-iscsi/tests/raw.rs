//! The wire protocol by hand: rights, malformed PDUs, and a server that keeps serving.

mod common;

use cleave_iscsi::pdu::{Opcode, Pdu};
use common::*;

const TUR: [u8; 6] = [0; 6];

#[test]
fn a_read_only_initiator_gets_data_protect() {
    let ro = "iqn.2025-01.invalid.test:reader";
    let mut a = access(&["disk"], 1 << 20);
    a.read_only.push(ro.into());
    let addr = start(a);
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(ro, "disk"), (0, 0));
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let r = c.scsi(&write10, &[7; 512], 0);
    assert_eq!(r.status, 2, "CHECK CONDITION");
    assert_eq!(r.sense_code(), Some((0x7, 0x27, 0x00)), "DATA PROTECT, WRITE PROTECTED");
    let r = c.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!((r.status, r.data.len()), (0, 512), "reads still work");
    // MODE SENSE reports the write protection.
    let r = c.scsi(&[0x1a, 0x08, 0x3f, 0, 255, 0], &[], 255);
    assert_eq!(r.data[2] & 0x80, 0x80);
    // A writer on the same volume may write.
    let mut w = Raw::connect(addr);
    assert_eq!(w.login("iqn.2025-01.invalid.test:writer", "disk"), (0, 0));
    assert_eq!(w.scsi(&write10, &[7; 512], 0).status, 0);
}

#[test]
fn unknown_targets_and_bad_logins_are_refused() {
    let addr = start(access(&["disk"], 1 << 20));
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(TEST_INITIATOR, "nope"), (2, 3), "target not found");
    let mut c = Raw::connect(addr);
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.set_flags(0x80 | 1 << 2 | 3);
    p.data = b"TargetName=x\0".to_vec().into();
    c.send(&p);
    let r = c.recv().unwrap();
    assert_eq!((r.bhs[36], r.bhs[37]), (2, 7), "missing InitiatorName");
}

#[test]
fn malformed_pdus_get_a_reject_and_the_server_keeps_serving() {
    let addr = start(access(&["disk"], 1 << 20));
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
    // An opcode RFC 7143 does not define: rejected, and the connection goes on.
    let mut bad = Pdu::new(Opcode::NopOut);
    bad.bhs[0] = 0x1c;
    bad.set_itt(99);
    c.send(&bad);
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.bhs[2]), (Some(Opcode::Reject), 0x05));
    assert_eq!(&r.data[..], &bad.bhs[..], "the reject carries the offending header");
    assert_eq!(c.scsi(&TUR, &[], 0).status, 0);
    // A target opcode sent by an initiator: a protocol error, rejected too.
    c.send(&Pdu::new(Opcode::R2t));
    assert_eq!(c.recv().unwrap().bhs[2], 0x04);
    // A data segment over our limit: rejected, then the connection is closed.
    let mut big = Pdu::new(Opcode::NopOut);
    big.data = vec![0u8; 300_000].into();
    c.send(&big);
    assert_eq!(c.recv().map(|r| r.opcode()), Some(Some(Opcode::Reject)));
    assert!(c.recv().is_none(), "closed");
    // Garbage instead of a login: closed, and others are served all along.
    let mut g = Raw::connect(addr);
    use std::io::Write;
    g.s.write_all(&[0xff; 48]).unwrap();
    let mut d = Raw::connect(addr);
    assert_eq!(d.login(TEST_INITIATOR, "disk"), (0, 0));
    assert_eq!(d.scsi(&TUR, &[], 0).status, 0);
}

#[test]
fn commands_outside_the_cmdsn_window_are_ignored() {
    let addr = start(access(&["disk"], 1 << 20));
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
    c.cmd_sn += 1000;
    let mut p = Pdu::new(Opcode::NopOut);
    p.set_flags(0x80);
    p.set_itt(5);
    p.set_u32(20, 0xffff_ffff);
    p.set_u32(24, c.cmd_sn);
    c.send(&p);
    c.cmd_sn -= 1000;
    // The next in-window command is answered, and is the first thing that is.
    let r = c.scsi(&TUR, &[], 0);
    assert_eq!(r.status, 0);
}

#[test]
fn digests_are_checked_when_negotiated() {
    let addr = start(access(&["disk"], 1 << 20));
    let mut c = Raw::connect(addr);
    assert_eq!(c.login_with(TEST_INITIATOR, "disk", "HeaderDigest=CRC32C,None\0DataDigest=CRC32C\0"), (0, 0));
    assert!(c.digests.header && c.digests.data);
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(c.scsi(&write10, &[9; 512], 0).status, 0);
    assert_eq!(c.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512).data, vec![9; 512]);
    // A NOP-Out whose data digest is wrong: rejected, and the connection goes on.
    let mut nop = Pdu::new(Opcode::NopOut);
    nop.set_immediate(true);
    nop.set_flags(0x80);
    nop.set_itt(77);
    nop.set_u32(20, 0xffff_ffff);
    nop.data = b"ping".to_vec().into();
    let mut wire = nop.encode(c.digests).to_vec();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    use std::io::Write;
    c.s.write_all(&wire).unwrap();
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.bhs[2]), (Some(Opcode::Reject), 0x02));
    c.send(&nop);
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.itt(), &r.data[..]), (Some(Opcode::NopIn), 77, &b"ping"[..]));
}

#[test]
fn reservations_survive_a_restart_through_the_host() {
    let shared = std::sync::Arc::new(access(&["disk"], 1 << 20));
    let register = |c: &mut Raw, key: u64| {
        let mut params = [0u8; 24];
        params[8..16].copy_from_slice(&key.to_be_bytes());
        c.scsi(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], &params, 0).status
    };
    let read_keys = |c: &mut Raw| c.scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[], 256).data;
    let addr = start_with(shared.clone());
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
    assert_eq!(register(&mut c, 0xabcd), 0);
    // Reserve Write Exclusive; another initiator's write then conflicts.
    let mut params = [0u8; 24];
    params[..8].copy_from_slice(&0xabcdu64.to_be_bytes());
    assert_eq!(c.scsi(&[0x5f, 1, 1, 0, 0, 0, 0, 0, 24, 0], &params, 0).status, 0);
    let mut other = Raw::connect(addr);
    assert_eq!(other.login("iqn.2025-01.invalid.test:other", "disk"), (0, 0));
    assert_eq!(other.scsi(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0).status, 0x18, "RESERVATION CONFLICT");
    assert_eq!(other.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512).status, 0, "reads are allowed");
    // A second target over the same host state sees the key and the reservation.
    let addr2 = start_with(shared.clone());
    let mut d = Raw::connect(addr2);
    assert_eq!(d.login("iqn.2025-01.invalid.test:other", "disk"), (0, 0));
    let keys = read_keys(&mut d);
    assert_eq!((u32::from_be_bytes(keys[4..8].try_into().unwrap()), &keys[8..16]), (8, &0xabcdu64.to_be_bytes()[..]));
    assert_eq!(d.scsi(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0).status, 0x18);
}

/// Two targets over one host store, each with a session that read the reservations before
/// the other changed them: a change on the stale one is made again on the stored state, so
/// neither target's registrations are lost and the reservation holds on both.
#[test]
fn a_change_on_a_stale_copy_of_the_reservations_keeps_the_other_targets_changes() {
    let shared = std::sync::Arc::new(access(&["disk"], 1 << 20));
    let (addr1, addr2) = (start_with(shared.clone()), start_with(shared.clone()));
    let mut late = Raw::connect(addr2);
    assert_eq!(late.login("iqn.2025-01.invalid.test:other", "disk"), (0, 0));
    assert_eq!(late.scsi(&TUR, &[], 0).status, 0);
    let mut first = Raw::connect(addr1);
    assert_eq!(first.login(TEST_INITIATOR, "disk"), (0, 0));
    assert_eq!(first.pr_out(0, 0, 0, 0x11), 0, "REGISTER");
    assert_eq!(first.pr_out(1, 1, 0x11, 0), 0, "RESERVE, Write Exclusive");
    assert_eq!(late.pr_out(0, 0, 0, 0x22), 0, "REGISTER on the other target");
    let keys = late.scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[], 256).data;
    assert_eq!(&keys[4..8], &16u32.to_be_bytes(), "both keys are registered: {keys:?}");
    assert_eq!(&keys[8..24], &[0x11u64.to_be_bytes(), 0x22u64.to_be_bytes()].concat()[..]);
    assert_eq!(late.scsi(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0).status, 0x18, "the reservation holds here");
}

/// A registrant preempted by another hears of it once, on its next command (REGISTRATIONS
/// PREEMPTED); the preempter hears nothing. A registrants-only reservation released by its
/// holder is told to the other registrants (RESERVATIONS RELEASED).
#[test]
fn registrants_hear_of_preemption_and_release() {
    let addr = start(access(&["disk"], 1 << 20));
    const REGISTRANTS_ONLY: u8 = 5;
    let (mut x, mut y, mut z) = (Raw::connect(addr), Raw::connect(addr), Raw::connect(addr));
    for (c, key) in [(&mut x, 0x11), (&mut y, 0x22), (&mut z, 0x33)] {
        assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
        assert_eq!(c.pr_out(0, 0, 0, key), 0, "REGISTER");
    }
    assert_eq!(x.pr_out(1, REGISTRANTS_ONLY, 0x11, 0), 0, "RESERVE");
    assert_eq!(y.pr_out(4, REGISTRANTS_ONLY, 0x22, 0x11), 0, "PREEMPT");
    assert_eq!(x.scsi(&TUR, &[], 0).sense_code(), Some((0x6, 0x2a, 0x05)), "REGISTRATIONS PREEMPTED");
    assert_eq!(x.scsi(&TUR, &[], 0).status, 0, "told once");
    assert_eq!(y.scsi(&TUR, &[], 0).status, 0, "the preempter is told nothing");
    assert_eq!(x.scsi(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0).status, 0x18, "x is not a registrant now");
    assert_eq!(y.pr_out(2, REGISTRANTS_ONLY, 0x22, 0), 0, "RELEASE");
    assert_eq!(z.scsi(&TUR, &[], 0).sense_code(), Some((0x6, 0x2a, 0x04)), "RESERVATIONS RELEASED");
    assert_eq!(x.scsi(&TUR, &[], 0).status, 0, "x, no registrant, is told nothing");
}

/// A login with the ISID of a live session (an initiator that lost its connection, logging
/// in again) reinstates it: the target closes the old session's connection and serves the
/// new one. Another ISID is another session, left alone.
#[test]
fn a_login_with_a_live_sessions_isid_reinstates_it() {
    use std::io::Read;
    let addr = start(access(&["disk"], 1 << 20));
    let mut old = Raw::connect(addr);
    assert_eq!(old.login(TEST_INITIATOR, "disk"), (0, 0));
    assert_eq!(old.scsi(&TUR, &[], 0).status, 0);
    let mut other = Raw::connect(addr);
    assert_eq!(other.login(TEST_INITIATOR, "disk"), (0, 0));
    let mut new = Raw::connect(addr);
    new.isid = old.isid;
    assert_eq!(new.login(TEST_INITIATOR, "disk"), (0, 0));
    assert_eq!(new.scsi(&TUR, &[], 0).status, 0);
    let mut byte = [0u8; 1];
    assert!(matches!(old.s.read(&mut byte), Ok(0)), "the reinstated session's connection is still open");
    assert_eq!(other.scsi(&TUR, &[], 0).status, 0, "a session with another ISID goes on");
}

#[test]
fn an_aborted_early_command_does_not_hold_up_the_ones_behind_it() {
    let addr = start(access(&["disk"], 1 << 20));
    let mut c = Raw::connect(addr);
    assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
    // CmdSN n+1 arrives before n: it waits. Then it is aborted, then n arrives.
    let mut early = Pdu::new(Opcode::ScsiCommand);
    early.set_flags(0x80);
    early.set_itt(500);
    early.set_u32(24, c.cmd_sn + 1);
    c.send(&early);
    let mut abort = Pdu::new(Opcode::TaskMgmtRequest);
    abort.set_immediate(true);
    abort.set_flags(0x80 | 1);
    abort.set_itt(501);
    abort.set_u32(20, 500);
    abort.set_u32(24, c.cmd_sn);
    c.send(&abort);
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.itt(), r.bhs[2]), (Some(Opcode::TaskMgmtResponse), 501, 0), "function complete");
    assert_eq!(c.scsi(&TUR, &[], 0).status, 0);
    // The aborted command's CmdSN counts as received: the next one runs at once.
    c.cmd_sn += 1;
    let r = c.scsi(&TUR, &[], 0);
    assert_eq!(r.status, 0);
}
