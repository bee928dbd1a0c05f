//! Commands of a session run concurrently: out of order with StatSN in sending order, as task
//! attributes allow, bounded by MaxCmdSN, and aborted or logged out of while running.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_iscsi::pdu::{Opcode, Pdu};
use cleave_nbd::{BlockDevice, BlockError, MemDevice};
use common::*;
use tokio::sync::Semaphore;

/// Device calls at or past this offset wait for the test to let them through.
const GATED: u64 = 1 << 20;
/// The window a session gets by default.
const WINDOW: u32 = 64;

/// A RAM disk whose calls past [`GATED`] wait at a gate the test opens.
struct Gated {
    inner: MemDevice,
    gate: Semaphore,
    /// Calls that reached the gate.
    waiting: AtomicUsize,
}

impl Gated {
    async fn pass(&self, offset: u64) {
        if offset >= GATED {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("never closed").forget();
        }
    }

    /// Waits until `n` calls are at the gate.
    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.waiting.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "{n} calls never reached the gate");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn open(&self, calls: usize) {
        self.gate.add_permits(calls);
    }
}

#[async_trait::async_trait]
impl BlockDevice for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.pass(offset).await;
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.pass(offset).await;
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush().await
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.inner.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.inner.write_zeroes(offset, len, fua).await
    }
}

/// A logged-in session on a 2 MiB disk whose second half is gated.
fn session() -> (Raw, Arc<Gated>) {
    let dev = Arc::new(Gated { inner: MemDevice::new(2 << 20), gate: Semaphore::new(0), waiting: AtomicUsize::new(0) });
    let mut access = access(&[], 0);
    access.volumes.insert("disk".into(), dev.clone() as Arc<dyn BlockDevice>);
    let mut c = Raw::connect(start(access));
    assert_eq!(c.login(TEST_INITIATOR, "disk"), (0, 0));
    (c, dev)
}

/// A session with a read running that waits at the gate; returns its ITT too.
fn busy_session() -> (Raw, Arc<Gated>, u32) {
    let (mut c, dev) = session();
    let slow = c.command(&read10(true), &[], 512, 1);
    dev.wait_for(1);
    (c, dev, slow)
}

/// READ (10) of one block: at LBA 0, or behind the gate.
fn read10(gated: bool) -> [u8; 10] {
    let lba: u32 = if gated { (GATED / 512) as u32 } else { 0 };
    let b = lba.to_be_bytes();
    [0x28, 0, b[0], b[1], b[2], b[3], 0, 0, 1, 0]
}

fn write10(gated: bool) -> [u8; 10] {
    let mut cdb = read10(gated);
    cdb[0] = 0x2a;
    cdb
}

const TUR: [u8; 6] = [0; 6];

/// A task management request for `itt` (immediate, as initiators send them).
fn tmf(c: &mut Raw, function: u8, referenced: u32, ref_cmd_sn: u32) -> u32 {
    let mut p = Pdu::new(Opcode::TaskMgmtRequest);
    p.set_immediate(true);
    p.set_flags(0x80 | function);
    c.itt += 1;
    p.set_itt(c.itt);
    p.set_u32(20, referenced);
    p.set_u32(24, c.cmd_sn);
    p.set_u32(32, ref_cmd_sn);
    c.send(&p);
    c.itt
}

/// The next PDU is the task management response to `itt`, with `response`.
fn expect_tmf(c: &mut Raw, itt: u32, response: u8) {
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.itt(), r.bhs[2]), (Some(Opcode::TaskMgmtResponse), itt, response));
}

/// Nothing else is on its way: a new command's response is the next to come.
fn nothing_else(c: &mut Raw, why: &str) {
    let tur = c.command(&TUR, &[], 0, 1);
    assert_eq!(c.reply().0.itt(), tur, "{why}");
}

/// The response to the task management request `itt` waits for the command at the gate, then
/// is "function complete", and nothing comes for the tasks it aborted.
fn complete_once_the_gate_opens(c: &mut Raw, dev: &Gated, itt: u32) {
    assert!(c.quiet(300), "the response waits for the running command to end");
    dev.open(1);
    expect_tmf(c, itt, 0);
    nothing_else(c, "nothing came for the aborted tasks");
}

#[test]
fn a_slow_command_does_not_hold_up_the_next_and_statsn_follows_the_sending_order() {
    let (mut c, dev) = session();
    let first_sn = c.cmd_sn;
    let slow = c.command(&read10(true), &[], 512, 1);
    dev.wait_for(1);
    let fast = c.command(&read10(false), &[], 512, 1);
    let (p, r) = c.reply();
    assert_eq!((p.itt(), r.status), (fast, 0), "the second command answers first");
    let stat_sn = p.sn24();
    // One command still holds a place in the window.
    assert_eq!((p.sn28(), p.u32_at(32)), (first_sn + 2, first_sn + WINDOW));
    dev.open(1);
    let (p, r) = c.reply();
    assert_eq!((p.itt(), r.status, r.data.len()), (slow, 0, 512));
    assert_eq!(p.sn24(), stat_sn + 1, "StatSN in the order responses are sent");
    assert_eq!(p.u32_at(32), first_sn + WINDOW + 1, "the window moved on");
}

#[test]
fn commands_of_a_session_run_at_once() {
    let (mut c, dev) = session();
    let a = c.command(&read10(true), &[], 512, 1);
    let b = c.command(&write10(true), &[5; 512], 0, 1);
    dev.wait_for(2);
    dev.open(2);
    let mut done = [c.reply().0.itt(), c.reply().0.itt()];
    done.sort();
    assert_eq!(done, [a, b]);
}

#[test]
fn ordered_waits_for_the_tasks_before_it_and_holds_up_those_after() {
    let (mut c, dev, slow) = busy_session();
    let ordered = c.command(&TUR, &[], 0, 2);
    let after = c.command(&read10(false), &[], 512, 1);
    let head = c.command(&TUR, &[], 0, 3);
    let (p, _) = c.reply();
    assert_eq!(p.itt(), head, "HEAD OF QUEUE passes them all");
    assert!(c.quiet(300), "ORDERED waits for the running task, SIMPLE for the ORDERED");
    dev.open(1);
    let order: Vec<u32> = (0..3).map(|_| c.reply().0.itt()).collect();
    assert_eq!(order, vec![slow, ordered, after]);
}

#[test]
fn abort_task_of_a_running_command_waits_for_it_and_it_gets_no_response() {
    let (mut c, dev) = session();
    let sn = c.cmd_sn;
    let write = c.command(&write10(true), &[7; 512], 0, 1);
    dev.wait_for(1);
    let abort = tmf(&mut c, 1, write, sn);
    complete_once_the_gate_opens(&mut c, &dev, abort);
}

#[test]
fn abort_task_of_a_waiting_command_is_answered_at_once() {
    let (mut c, dev, slow) = busy_session();
    let sn = c.cmd_sn;
    let waiting = c.command(&read10(false), &[], 512, 2);
    let abort = tmf(&mut c, 1, waiting, sn);
    expect_tmf(&mut c, abort, 0);
    dev.open(1);
    assert_eq!(c.reply().0.itt(), slow);
    nothing_else(&mut c, "nothing came for the aborted read");
}

#[test]
fn abort_task_of_a_finished_command_says_it_does_not_exist() {
    let (mut c, _dev) = session();
    let sn = c.cmd_sn;
    let tur = c.command(&TUR, &[], 0, 1);
    assert_eq!(c.reply().0.itt(), tur);
    let abort = tmf(&mut c, 1, tur, sn);
    expect_tmf(&mut c, abort, 1);
}

#[test]
fn lun_reset_aborts_every_task_and_answers_once_the_running_ones_end() {
    let (mut c, dev, _) = busy_session();
    c.command(&TUR, &[], 0, 2);
    let reset = tmf(&mut c, 5, 0xffff_ffff, 0);
    complete_once_the_gate_opens(&mut c, &dev, reset);
}

#[test]
fn a_command_beyond_max_cmd_sn_is_dropped_while_others_run() {
    let (mut c, dev, slow) = busy_session();
    // MaxCmdSN is one short of a full window while a command runs: this one is past it.
    let sn = c.cmd_sn;
    c.cmd_sn = sn + WINDOW - 1;
    c.command(&TUR, &[], 0, 1);
    // Every CmdSN before it comes; had it been kept, it would run among them.
    c.cmd_sn = sn;
    for _ in 0..WINDOW - 1 {
        let tur = c.command(&TUR, &[], 0, 1);
        assert_eq!(c.reply().0.itt(), tur);
    }
    dev.open(1);
    assert_eq!(c.reply().0.itt(), slow);
    assert!(c.quiet(300), "the command past MaxCmdSN was dropped");
}

#[test]
fn a_full_window_takes_nothing_more_until_a_command_ends() {
    let (mut c, dev) = session();
    let reads: Vec<u32> = (0..WINDOW).map(|_| c.command(&read10(true), &[], 512, 1)).collect();
    dev.wait_for(WINDOW as usize);
    // MaxCmdSN is ExpCmdSN - 1 now: even the next CmdSN in line is refused.
    let refused = c.command(&TUR, &[], 0, 1);
    assert!(c.quiet(300));
    dev.open(WINDOW as usize);
    let mut done: Vec<u32> = (0..WINDOW).map(|_| c.reply().0.itt()).collect();
    done.sort();
    assert_eq!(done, reads);
    assert!(c.quiet(300), "the command sent into a full window was dropped");
    c.cmd_sn -= 1;
    let tur = c.command(&TUR, &[], 0, 1);
    assert_ne!(tur, refused);
    assert_eq!(c.reply().0.itt(), tur, "its CmdSN is taken once the window opens");
}

#[test]
fn a_write_gets_its_r2t_while_another_command_runs() {
    let (mut c, dev, slow) = busy_session();
    // 64 blocks, no immediate data, no unsolicited data: all of it through R2T.
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.set_flags(0x80 | 0x20 | 1);
    c.itt += 1;
    let write = c.itt;
    p.set_itt(write);
    p.set_u32(20, 64 * 512);
    p.set_u32(24, c.cmd_sn);
    c.cmd_sn += 1;
    p.bhs[32..42].copy_from_slice(&[0x2a, 0, 0, 0, 0, 8, 0, 0, 64, 0]);
    c.send(&p);
    let r2t = c.recv().unwrap();
    assert_eq!((r2t.opcode(), r2t.itt(), r2t.u32_at(40), r2t.u32_at(44)), (Some(Opcode::R2t), write, 0, 64 * 512));
    let mut d = Pdu::new(Opcode::DataOut);
    d.set_flags(0x80);
    d.set_itt(write);
    d.set_u32(20, r2t.field20());
    d.data = vec![9u8; 64 * 512].into();
    c.send(&d);
    let (p, r) = c.reply();
    assert_eq!((p.itt(), r.status), (write, 0));
    dev.open(1);
    assert_eq!(c.reply().0.itt(), slow);
    let back = c.scsi(&[0x28, 0, 0, 0, 0, 8, 0, 0, 64, 0], &[], 64 * 512);
    assert_eq!(back.data, vec![9u8; 64 * 512]);
}

#[test]
fn logout_waits_for_running_commands_which_get_no_response() {
    let (mut c, dev) = session();
    c.command(&write10(true), &[3; 512], 0, 1);
    dev.wait_for(1);
    let mut p = Pdu::new(Opcode::LogoutRequest);
    p.set_immediate(true);
    p.set_flags(0x80);
    p.set_itt(900);
    p.set_u32(24, c.cmd_sn);
    c.send(&p);
    assert!(c.quiet(300), "the logout response waits for the write");
    dev.open(1);
    let r = c.recv().unwrap();
    assert_eq!((r.opcode(), r.itt(), r.bhs[2]), (Some(Opcode::LogoutResponse), 900, 0));
    assert!(c.recv().is_none(), "then the connection closes");
}
