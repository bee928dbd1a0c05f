//! Task management (RFC 7143 §11.5) and logout (§11.14) over a task set whose commands run
//! concurrently. A task not yet running is dropped at once. A running one is never cut short
//! (a device call half done must not land after the initiator has been told it is gone):
//! it is left to end unanswered, and the response that aborted it waits for that.

use crate::pdu::{Opcode, Pdu};
use crate::session::{sn_after, Flow, Session, NO_TAG};
use crate::task::{Fence, Stage};

/// A NOP-Out that needs no answer, standing in for a command at `cmd_sn`: the CmdSN counts as
/// received, so the commands behind it are not held up.
fn placeholder(cmd_sn: u32) -> Pdu {
    let mut nop = Pdu::new(Opcode::NopOut);
    nop.set_itt(NO_TAG);
    nop.set_u32(24, cmd_sn);
    nop
}

impl Session {
    pub(crate) fn task_management(&mut self, p: Pdu) -> Flow {
        let function = p.flags() & 0x7f;
        let (response, waiting) = match function {
            1 => self.abort_task(&p),
            // ABORT TASK SET, CLEAR TASK SET, LUN RESET, TARGET WARM/COLD RESET.
            2 | 4 | 5 | 6 | 7 => {
                self.abort_queued(|_| true);
                (0, self.abort_all())
            }
            // CLEAR ACA: ACA is never established (NACA is not supported).
            3 => (0, Vec::new()),
            // TASK REASSIGN needs error recovery level 2.
            8 => (4, Vec::new()),
            _ => (5, Vec::new()),
        };
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_flags(0x80);
        r.bhs[2] = response;
        r.set_itt(p.itt());
        self.fence(waiting, r, function == 7)
    }

    /// ABORT TASK (RFC 7143 §11.5.1): the response code and the running task to wait for.
    fn abort_task(&mut self, p: &Pdu) -> (u8, Vec<u64>) {
        let referenced = p.field20();
        if let Some(seq) = self.tasks.seq_of(referenced) {
            return (0, self.abort(seq).into_iter().collect());
        }
        if self.abort_queued(|q| q.itt() == referenced) > 0 {
            return (0, Vec::new());
        }
        // Never received, yet its CmdSN is in the window and before this request's: it counts
        // as received (so nothing waits for it) and is complete. Otherwise it finished already.
        let ref_sn = p.u32_at(32);
        if self.in_window(ref_sn) && sn_after(p.sn24(), ref_sn) {
            self.queued.entry(ref_sn).or_insert_with(|| placeholder(ref_sn));
            return (0, Vec::new());
        }
        (1, Vec::new())
    }

    /// Aborts one task: one not running goes at once; a running one is marked, left to end,
    /// and returned to wait for.
    fn abort(&mut self, seq: u64) -> Option<u64> {
        let task = self.tasks.get_mut(seq)?;
        if let Stage::Running | Stage::Aborted = task.stage {
            task.stage = Stage::Aborted;
            return Some(seq);
        }
        let slot = self.tasks.remove(seq).is_some_and(|t| t.slot);
        self.release(slot);
        None
    }

    /// Aborts every task; returns the running ones.
    fn abort_all(&mut self) -> Vec<u64> {
        self.tasks.seqs().into_iter().filter_map(|seq| self.abort(seq)).collect()
    }

    /// Aborts SCSI commands that arrived ahead of their turn: each becomes a placeholder.
    /// Returns how many.
    fn abort_queued(&mut self, which: impl Fn(&Pdu) -> bool) -> usize {
        let mut n = 0;
        for q in self.queued.values_mut().filter(|q| q.opcode() == Some(Opcode::ScsiCommand) && which(q)) {
            *q = placeholder(q.sn24());
            n += 1;
        }
        n
    }

    /// Logout closes the session (or the connection, which is all of it): every task is
    /// terminated and gets no response (RFC 7143 §11.14); the response follows the end of the
    /// running ones.
    pub(crate) fn logout(&mut self, p: Pdu) -> Flow {
        self.logging_out = true;
        self.abort_queued(|_| true);
        let waiting = self.abort_all();
        let mut r = Pdu::new(Opcode::LogoutResponse);
        r.set_flags(0x80);
        // Removing a connection for recovery needs error recovery level 2.
        r.bhs[2] = if p.flags() & 0x7f == 2 { 2 } else { 0 };
        r.set_itt(p.itt());
        self.fence(waiting, r, true)
    }

    /// Sends `response` once the tasks in `waiting` have ended (at once when none).
    fn fence(&mut self, waiting: Vec<u64>, response: Pdu, close: bool) -> Flow {
        self.fences.push(Fence { waiting, response, close });
        self.fenced(None)
    }

    /// An aborted task ended (or none, to check): sends the responses no longer waiting.
    pub(crate) fn fenced(&mut self, ended: Option<u64>) -> Flow {
        let mut flow = Flow::Continue;
        for f in &mut self.fences {
            f.waiting.retain(|&s| Some(s) != ended);
        }
        while let Some(i) = self.fences.iter().position(|f| f.waiting.is_empty()) {
            let mut f = self.fences.remove(i);
            self.numbers(&mut f.response, true);
            self.send(f.response);
            if f.close {
                flow = Flow::Close;
            }
        }
        flow
    }
}
