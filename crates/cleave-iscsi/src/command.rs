//! SCSI Command PDUs and their data (RFC 7143 §11.3-11.8): admission into the task set,
//! immediate and unsolicited data, R2T for the rest, tasks started as their attributes allow,
//! Data-In with the status in the last PDU, residual counts.

use bytes::Bytes;
use tokio::task::JoinError;

use crate::login::SessionType;
use crate::pdu::{Opcode, Pdu};
use crate::scsi::{self, Outcome, Sense, Status};
use crate::session::{Flow, RejectReason, Session, NO_TAG};
use crate::task::{Attr, Done, Stage, Task};
use crate::write::{Phase, WriteTask};

/// TASK SET FULL: the initiator retries later.
fn busy() -> Outcome {
    Outcome { status: Status::TaskSetFull, data: Bytes::new(), sense: None }
}

/// The data-out length the CDB asks for, for the residual count; None when neither it nor
/// the initiator had any.
fn spdtl(cdb: &[u8], had_data: bool) -> Option<u64> {
    let wanted = scsi::io::data_out_len(cdb);
    (had_data || wanted != 0).then_some(wanted)
}

impl Session {
    /// A SCSI Command in its turn (or immediate; then `slot` is false): answered at once when
    /// it cannot be taken, else into the task set.
    pub(crate) fn scsi_command(&mut self, p: Pdu, slot: bool) {
        if self.kind == SessionType::Discovery {
            self.release(slot);
            self.reject(RejectReason::Protocol, &p.bhs);
            return;
        }
        let (write, edtl, itt, lun) = (p.flags() & 0x20 != 0, p.field20(), p.itt(), p.lun());
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(p.cdb());
        let immediate = if write { p.data.slice(..p.data.len().min(edtl as usize)) } else { Bytes::new() };
        if let Some((outcome, spdtl)) = self.refusal(&p, &cdb, write, slot, !immediate.is_empty()) {
            self.release(slot);
            self.respond(itt, lun, edtl, outcome, spdtl);
            return;
        }
        let stage = if write && edtl > 0 {
            let unsolicited = !self.params.initial_r2t && !p.final_bit();
            let received = immediate.len() as u32;
            let until = if unsolicited { self.params.first_burst.min(edtl).max(received) } else { received };
            let parts = if immediate.is_empty() { Vec::new() } else { vec![immediate] };
            Stage::Data(WriteTask { parts, received, phase: Phase::Unsolicited { until }, data_sn: 0, r2t_sn: 0 })
        } else {
            Stage::Ready(Bytes::new())
        };
        // The bytes its data takes while it has it (no command moves more than MAX_TRANSFER).
        let size = (edtl as u64).max(scsi::io::data_in_len(&cdb)).min(scsi::MAX_TRANSFER as u64);
        let need = size.min(self.tasks.capacity() as u64) as u32;
        let attr = Attr::from_flags(p.flags());
        let seq = self.tasks.insert(Task { itt, lun, cdb, edtl, attr, slot, need, budget: None, stage });
        self.advance(seq);
    }

    /// Why a command cannot be taken, with its outcome and data-out length for the residual.
    fn refusal(
        &mut self,
        p: &Pdu,
        cdb: &[u8; 16],
        write: bool,
        slot: bool,
        had_data: bool,
    ) -> Option<(Outcome, Option<u64>)> {
        let edtl = p.field20();
        if self.tasks.has_itt(p.itt()) {
            return Some((Outcome::check(Sense::OVERLAPPED_COMMANDS), Some(edtl as u64)));
        }
        // Larger than any command takes: refused before any data is held.
        if write && edtl > scsi::MAX_TRANSFER {
            return Some((Outcome::check(Sense::INVALID_FIELD_IN_CDB), Some(edtl as u64)));
        }
        // Immediate commands take no CmdSN slot; this bounds them.
        if !slot && self.tasks.len() >= self.window as usize {
            return Some((busy(), Some(edtl as u64)));
        }
        // A unit attention goes to the first command in CmdSN order that may report it.
        let refused = match &self.lu {
            // REPORT LUNS answers for any LUN; everything else needs LUN 0.
            Some(lu) if p.lun() == 0 || cdb[0] == 0xa0 => lu.attention(&mut self.nexus, cdb[0]).map(Outcome::check),
            _ => Some(Outcome::check(Sense::LUN_NOT_SUPPORTED)),
        };
        refused.map(|o| (o, spdtl(cdb, had_data)))
    }

    /// Hands out budget that came free (to writes: their next R2T), then starts every task
    /// whose turn it is.
    pub(crate) fn progress(&mut self) {
        for seq in self.tasks.pump() {
            self.advance(seq);
        }
        for seq in self.tasks.startable() {
            let Some(task) = self.tasks.get_mut(seq) else { continue };
            let Stage::Ready(data) = std::mem::replace(&mut task.stage, Stage::Running) else { continue };
            let (cdb, lu, port) = (task.cdb, self.lu.clone(), self.nexus.port.clone());
            let handle = self.running.spawn(async move {
                let had_data = !data.is_empty();
                let outcome = match lu {
                    Some(lu) => lu.run(&port, &cdb, data).await,
                    None => Outcome::check(Sense::LUN_NOT_SUPPORTED),
                };
                (outcome, had_data)
            });
            self.by_id.insert(handle.id(), seq);
        }
    }

    /// A write at a sequence boundary, or given its budget: ready once all its data is in,
    /// else an R2T for the next burst when it has budget.
    pub(crate) fn advance(&mut self, seq: u64) {
        let Some(task) = self.tasks.get_mut(seq) else { return };
        let granted = task.granted();
        let Stage::Data(w) = &mut task.stage else { return };
        if w.until() > w.received {
            return;
        }
        if w.received >= task.edtl {
            task.stage = Stage::Ready(w.take_data());
            return;
        }
        if !granted {
            return;
        }
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1) % NO_TAG;
        let len = self.params.max_burst.min(task.edtl - w.received);
        let mut r = Pdu::new(Opcode::R2t);
        r.set_flags(0x80);
        r.set_lun(task.lun);
        r.set_itt(task.itt);
        r.set_u32(20, ttt);
        r.set_u32(36, w.r2t_sn);
        r.set_u32(40, w.received);
        r.set_u32(44, len);
        w.r2t_sn = w.r2t_sn.wrapping_add(1);
        w.data_sn = 0;
        w.phase = Phase::Solicited { ttt, until: w.received + len };
        self.numbers(&mut r, false);
        self.send(r);
    }

    pub(crate) fn data_out(&mut self, p: Pdu) {
        // Data for a task we no longer have (aborted, or failed) is dropped (RFC 7143 §4.2.3.3).
        let Some(seq) = self.tasks.seq_of(p.itt()) else { return };
        let Some(task) = self.tasks.get_mut(seq) else { return };
        let Stage::Data(w) = &mut task.stage else { return };
        match w.accept(&p) {
            Ok(true) => self.advance(seq),
            Ok(false) => {}
            Err(()) => {
                // At error recovery level 0 a sequence error fails the task; the Reject ends it.
                let slot = self.tasks.remove(seq).is_some_and(|t| t.slot);
                self.release(slot);
                self.reject(RejectReason::Protocol, &p.bhs);
            }
        }
    }

    /// A task's run ended: its response goes out, unless it was aborted meanwhile.
    pub(crate) fn finished(&mut self, ended: Result<(tokio::task::Id, Done), JoinError>) -> Flow {
        let (id, done) = match ended {
            Ok((id, done)) => (id, Some(done)),
            Err(e) => (e.id(), None),
        };
        let Some(seq) = self.by_id.remove(&id) else { return Flow::Continue };
        let Some(task) = self.tasks.remove(seq) else { return Flow::Continue };
        self.release(task.slot);
        if let Stage::Aborted = task.stage {
            return self.fenced(Some(seq));
        }
        // A panic in a device call fails the command, not the session.
        let (outcome, had_data) = done.unwrap_or((Outcome::check(Sense::INTERNAL_TARGET_FAILURE), false));
        // Its data stays in the budget until written.
        self.out_budget.extend(task.budget);
        self.respond(task.itt, task.lun, task.edtl, outcome, spdtl(&task.cdb, had_data));
        Flow::Continue
    }

    /// Data-In PDUs then status: in the last Data-In when the command succeeded with data,
    /// else in a SCSI Response. `spdtl_out` is the data-out length the CDB asked for.
    fn respond(&mut self, itt: u32, lun: u64, edtl: u32, outcome: Outcome, spdtl_out: Option<u64>) {
        let spdtl = spdtl_out.unwrap_or(outcome.data.len() as u64);
        // Residual flags: O (overflow) 0x04, U (underflow) 0x02.
        let residual = match spdtl.cmp(&(edtl as u64)) {
            std::cmp::Ordering::Greater => (0x04, (spdtl - edtl as u64).min(u32::MAX as u64) as u32),
            std::cmp::Ordering::Less => (0x02, edtl - spdtl as u32),
            std::cmp::Ordering::Equal => (0, 0),
        };
        let data = outcome.data.slice(..outcome.data.len().min(edtl as usize));
        let good = outcome.status == Status::Good;
        let data_sn = self.data_in(itt, lun, &data, good.then_some(residual));
        if good && !data.is_empty() {
            return;
        }
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80 | residual.0);
        r.bhs[3] = outcome.status.code();
        r.set_itt(itt);
        self.numbers(&mut r, true);
        r.set_u32(36, data_sn);
        r.set_u32(44, residual.1);
        if let Some(sense) = outcome.sense {
            let s = sense.fixed();
            let mut seg = (s.len() as u16).to_be_bytes().to_vec();
            seg.extend_from_slice(&s);
            r.data = seg.into();
        }
        self.send(r);
    }

    /// Sends `data` as Data-In PDUs within the initiator's limits, F at each burst's end; with
    /// `status` (residual flags and count) the last one carries GOOD status. Returns the count.
    fn data_in(&mut self, itt: u32, lun: u64, data: &Bytes, status: Option<(u8, u32)>) -> u32 {
        let max = (self.params.max_send_data as usize).max(512);
        let burst = self.params.max_burst.max(512) as usize;
        let (mut at, mut data_sn) = (0, 0u32);
        while at < data.len() {
            let n = max.min(data.len() - at).min(burst - at % burst);
            let last = at + n == data.len();
            let mut d = Pdu::new(Opcode::DataIn);
            let mut f = if last || (at + n).is_multiple_of(burst) { 0x80 } else { 0 };
            if let Some((flags, residual)) = status.filter(|_| last) {
                f |= 0x01 | flags;
                d.bhs[3] = Status::Good.code();
                d.set_u32(44, residual);
            }
            d.set_flags(f);
            d.set_lun(lun);
            d.set_itt(itt);
            d.set_u32(20, NO_TAG);
            self.numbers(&mut d, last && status.is_some());
            d.set_u32(36, data_sn);
            d.set_u32(40, at as u32);
            d.data = data.slice(at..at + n);
            self.send(d);
            data_sn += 1;
            at += n;
        }
        data_sn
    }
}
