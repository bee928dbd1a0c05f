//! SCSI Command PDUs and their data (RFC 7143 §11.3-11.8): immediate and unsolicited data,
//! R2T for the rest, Data-In with the status in the last PDU, residual counts.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::login::SessionType;
use crate::pdu::{Opcode, Pdu};
use crate::scsi::{self, Outcome, Sense, Status};
use crate::session::{Flow, RejectReason, Session, NO_TAG};
use crate::ConnError;

/// TASK SET FULL: the initiator retries later.
fn busy() -> Outcome {
    Outcome { status: Status::TaskSetFull, data: Bytes::new(), sense: None }
}

/// The part of a command the target still expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Unsolicited Data-Out up to this offset (the first burst).
    Unsolicited { until: u32 },
    /// Data for the outstanding R2T.
    Solicited { ttt: u32, until: u32 },
}

/// A write waiting for its data.
pub struct WriteTask {
    lun: u64,
    cdb: [u8; 16],
    edtl: u32,
    buf: BytesMut,
    /// Bytes received so far; data arrives in order (DataPDUInOrder=Yes).
    received: u32,
    phase: Phase,
    data_sn: u32,
    r2t_sn: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(crate) async fn scsi_command(&mut self, p: Pdu) -> Result<Flow, ConnError> {
        if self.kind == SessionType::Discovery {
            self.reject(RejectReason::Protocol, &p.bhs);
            return Ok(Flow::Continue);
        }
        let (write, edtl) = (p.flags() & 0x20 != 0, p.field20());
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(p.cdb());
        if !write || edtl == 0 {
            self.execute(p.itt(), p.lun(), &cdb, edtl, Bytes::new()).await;
            return Ok(Flow::Continue);
        }
        // Larger than any command takes, or too many writes waiting: refused before any data
        // is held. Data-Out that follows for the ITT finds no task and is dropped.
        if edtl > scsi::MAX_TRANSFER || self.writes.len() >= self.window as usize {
            let status = if edtl > scsi::MAX_TRANSFER { Outcome::check(Sense::INVALID_FIELD_IN_CDB) } else { busy() };
            self.respond(p.itt(), p.lun(), edtl, status, Some(edtl as u64));
            return Ok(Flow::Continue);
        }
        let immediate = p.data.slice(..p.data.len().min(edtl as usize));
        let first_burst = self.params.first_burst.min(edtl);
        let unsolicited = !self.params.initial_r2t && !p.final_bit();
        // Grows as data arrives: a command alone reserves nothing.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&immediate);
        let received = immediate.len() as u32;
        let mut task = WriteTask {
            lun: p.lun(),
            cdb,
            edtl,
            buf,
            received,
            phase: Phase::Unsolicited { until: if unsolicited { first_burst.max(received) } else { received } },
            data_sn: 0,
            r2t_sn: 0,
        };
        self.advance(p.itt(), &mut task).await;
        if task.received < task.edtl || matches!(task.phase, Phase::Unsolicited { until } if until > task.received) {
            self.writes.insert(p.itt(), task);
        }
        Ok(Flow::Continue)
    }

    /// After data arrived at a sequence boundary: runs the command or asks for more.
    async fn advance(&mut self, itt: u32, task: &mut WriteTask) {
        let waiting = match task.phase {
            Phase::Unsolicited { until } | Phase::Solicited { until, .. } => until > task.received,
        };
        if waiting {
            return;
        }
        if task.received >= task.edtl {
            let data = std::mem::take(&mut task.buf).freeze();
            self.execute(itt, task.lun, &task.cdb, task.edtl, data).await;
            return;
        }
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1) % NO_TAG;
        let len = self.params.max_burst.min(task.edtl - task.received);
        let mut r = Pdu::new(Opcode::R2t);
        r.set_flags(0x80);
        r.set_lun(task.lun);
        r.set_itt(itt);
        r.set_u32(20, ttt);
        self.numbers(&mut r, false);
        r.set_u32(36, task.r2t_sn);
        r.set_u32(40, task.received);
        r.set_u32(44, len);
        self.send(r);
        task.r2t_sn = task.r2t_sn.wrapping_add(1);
        task.data_sn = 0;
        task.phase = Phase::Solicited { ttt, until: task.received + len };
    }

    pub(crate) async fn data_out(&mut self, p: Pdu) -> Result<Flow, ConnError> {
        // Data for a task we no longer have (aborted, or failed) is dropped (RFC 7143 §4.2.3.3).
        let Some(mut task) = self.writes.remove(&p.itt()) else { return Ok(Flow::Continue) };
        let (ttt, until) = match task.phase {
            Phase::Unsolicited { until } => (NO_TAG, until),
            Phase::Solicited { ttt, until } => (ttt, until),
        };
        let (offset, len) = (p.u32_at(40), p.data.len() as u32);
        let fits = offset == task.received && offset.checked_add(len).is_some_and(|e| e <= until);
        if p.field20() != ttt || p.u32_at(36) != task.data_sn || !fits {
            // At error recovery level 0 a sequence error fails the task; the Reject ends it.
            self.reject(RejectReason::Protocol, &p.bhs);
            return Ok(Flow::Continue);
        }
        task.buf.extend_from_slice(&p.data);
        task.received += len;
        task.data_sn = task.data_sn.wrapping_add(1);
        if p.final_bit() && task.received < until {
            // The initiator ended the sequence early: it will never send the rest.
            self.reject(RejectReason::Protocol, &p.bhs);
            return Ok(Flow::Continue);
        }
        if p.final_bit() || task.received == until {
            if let Phase::Unsolicited { .. } = task.phase {
                task.phase = Phase::Unsolicited { until: task.received };
            }
            self.advance(p.itt(), &mut task).await;
        }
        if task.received < task.edtl || !task.buf.is_empty() {
            self.writes.insert(p.itt(), task);
        }
        Ok(Flow::Continue)
    }

    /// Runs a command with all its data and sends its data and status.
    async fn execute(&mut self, itt: u32, lun: u64, cdb: &[u8; 16], edtl: u32, data: Bytes) {
        let outcome = match &self.lu {
            // REPORT LUNS answers for any LUN; everything else needs LUN 0.
            Some(lu) if lun == 0 || cdb[0] == 0xa0 => lu.clone().execute(&mut self.nexus, cdb, data.clone()).await,
            _ => Outcome::check(Sense::LUN_NOT_SUPPORTED),
        };
        let wanted = scsi::io::data_out_len(cdb);
        self.respond(itt, lun, edtl, outcome, if data.is_empty() && wanted == 0 { None } else { Some(wanted) });
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
