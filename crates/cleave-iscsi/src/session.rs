//! Full feature phase on one connection (RFC 7143 §4): command ordering by CmdSN, StatSN,
//! NOP, task management, text (SendTargets) and logout. SCSI commands and their data are in
//! [`crate::command`].
//!
//! Commands run one at a time in CmdSN order; a write waiting for Data-Out does not block
//! the commands behind it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::access::{Access, Identity};
use crate::command::WriteTask;
use crate::login::SessionType;
use crate::negotiate::Params;
use crate::pdu::{self, Digests, Opcode, Pdu, PduError, BHS_LEN};
use crate::scsi::{Lu, Nexus};
use crate::text;
use crate::ConnError;

/// The "no tag" value of ITT and TTT fields.
pub const NO_TAG: u32 = 0xffff_ffff;

/// Reasons in a Reject PDU (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    DataDigest = 0x02,
    Snack = 0x03,
    Protocol = 0x04,
    NotSupported = 0x05,
    InvalidField = 0x09,
}

/// Whether the connection goes on after a PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// RFC 1982 serial number comparison: `a` comes after `b`.
pub fn sn_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// Reads one PDU; None at a clean EOF before its first byte. A malformed PDU's error carries
/// its header, for the Reject that answers it.
pub async fn read_pdu<R: AsyncRead + Unpin>(r: &mut R, d: Digests, max_data: usize) -> Result<Option<Pdu>, ConnError> {
    let mut bhs = [0u8; BHS_LEN];
    match r.read_exact(&mut bhs).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = pdu::lengths(&bhs, max_data).map_err(|e| ConnError::Pdu(e, Box::new(bhs)))?;
    let mut rest = vec![0u8; len.rest(d)];
    r.read_exact(&mut rest).await?;
    pdu::parse_rest(bhs, len, &rest, d).map(Some).map_err(|e| ConnError::Pdu(e, Box::new(bhs)))
}

/// A session in full feature phase (one connection per session).
pub struct Session<S> {
    pub(crate) stream: S,
    pub(crate) digests: Digests,
    pub(crate) params: Params,
    /// Our declared MaxRecvDataSegmentLength.
    pub(crate) max_recv: usize,
    pub(crate) stat_sn: u32,
    pub(crate) exp_cmd_sn: u32,
    pub(crate) window: u32,
    /// Commands that arrived ahead of ExpCmdSN, by CmdSN.
    pub(crate) queued: BTreeMap<u32, Pdu>,
    /// Writes waiting for Data-Out, by ITT.
    pub(crate) writes: HashMap<u32, WriteTask>,
    pub(crate) next_ttt: u32,
    pub(crate) kind: SessionType,
    pub(crate) lu: Option<Arc<Lu>>,
    pub(crate) nexus: Nexus,
    pub(crate) identity: Identity,
    pub(crate) access: Arc<dyn Access>,
    pub(crate) target: Option<String>,
    pub(crate) iqn_base: String,
    pub(crate) portal: Option<SocketAddr>,
    /// Encoded responses waiting for the next flush.
    pub(crate) out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Serves until logout, EOF or a fatal error.
    pub async fn run(mut self) -> Result<(), ConnError> {
        loop {
            let flow = match self.read_pdu().await {
                Ok(Some(p)) => self.on_pdu(p).await?,
                Ok(None) => return Ok(()),
                Err(ConnError::Pdu(PduError::DataDigest, bhs)) => {
                    self.reject(RejectReason::DataDigest, &bhs);
                    Flow::Continue
                }
                Err(ConnError::Pdu(e @ PduError::DataTooLong { .. }, bhs)) => {
                    self.reject(RejectReason::Protocol, &bhs);
                    self.flush().await?;
                    return Err(ConnError::Pdu(e, bhs));
                }
                Err(e) => return Err(e),
            };
            self.flush().await?;
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn read_pdu(&mut self) -> Result<Option<Pdu>, ConnError> {
        read_pdu(&mut self.stream, self.digests, self.max_recv).await
    }

    pub(crate) fn send(&mut self, p: Pdu) {
        self.out.extend_from_slice(&p.encode(self.digests));
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Fills StatSN (advancing it when `status`), ExpCmdSN and MaxCmdSN.
    pub(crate) fn numbers(&mut self, p: &mut Pdu, status: bool) {
        if status {
            p.set_u32(24, self.stat_sn);
            self.stat_sn = self.stat_sn.wrapping_add(1);
        } else if p.opcode() == Some(Opcode::R2t) {
            p.set_u32(24, self.stat_sn);
        }
        p.set_u32(28, self.exp_cmd_sn);
        p.set_u32(32, self.exp_cmd_sn.wrapping_add(self.window - 1));
    }

    pub(crate) fn reject(&mut self, reason: RejectReason, header: &[u8; BHS_LEN]) {
        let mut p = Pdu::new(Opcode::Reject);
        p.set_flags(0x80);
        p.bhs[2] = reason as u8;
        p.set_itt(NO_TAG);
        self.numbers(&mut p, true);
        p.data = bytes::Bytes::copy_from_slice(header);
        self.send(p);
    }

    async fn on_pdu(&mut self, p: Pdu) -> Result<Flow, ConnError> {
        match p.opcode() {
            Some(Opcode::DataOut) => self.data_out(p).await,
            Some(Opcode::ScsiCommand | Opcode::NopOut | Opcode::TaskMgmtRequest | Opcode::TextRequest)
            | Some(Opcode::LogoutRequest) => self.ordered(p).await,
            Some(Opcode::SnackRequest) => {
                // Error recovery level 0 has no SNACK.
                self.reject(RejectReason::Snack, &p.bhs);
                Ok(Flow::Continue)
            }
            Some(_) => {
                self.reject(RejectReason::Protocol, &p.bhs);
                Ok(Flow::Continue)
            }
            None => {
                self.reject(RejectReason::NotSupported, &p.bhs);
                Ok(Flow::Continue)
            }
        }
    }

    /// CmdSN ordering (RFC 7143 §4.2.2.1): immediate PDUs run now; others run in CmdSN order,
    /// are queued when early, and are dropped silently outside the window.
    async fn ordered(&mut self, p: Pdu) -> Result<Flow, ConnError> {
        if p.immediate() {
            return self.command(p).await;
        }
        let sn = p.sn24();
        if sn != self.exp_cmd_sn {
            let in_window =
                sn_after(sn, self.exp_cmd_sn) && !sn_after(sn, self.exp_cmd_sn.wrapping_add(self.window - 1));
            if in_window && self.queued.len() < self.window as usize {
                self.queued.insert(sn, p);
            } else {
                debug!(cmd_sn = sn, exp_cmd_sn = self.exp_cmd_sn, "PDU outside the CmdSN window dropped");
            }
            return Ok(Flow::Continue);
        }
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        let mut flow = self.command(p).await?;
        while flow == Flow::Continue {
            let Some(next) = self.queued.remove(&self.exp_cmd_sn) else { break };
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            flow = self.command(next).await?;
        }
        Ok(flow)
    }

    async fn command(&mut self, p: Pdu) -> Result<Flow, ConnError> {
        match p.opcode() {
            Some(Opcode::ScsiCommand) => self.scsi_command(p).await,
            Some(Opcode::NopOut) => Ok(self.nop_out(p)),
            Some(Opcode::TaskMgmtRequest) => Ok(self.task_management(p)),
            Some(Opcode::TextRequest) => Ok(self.text(p)),
            _ => Ok(self.logout(p)),
        }
    }

    fn nop_out(&mut self, p: Pdu) -> Flow {
        // ITT 0xffffffff: an answer to our NOP-In, or a bare CmdSN update; nothing to say.
        if p.itt() == NO_TAG {
            return Flow::Continue;
        }
        let mut r = Pdu::new(Opcode::NopIn);
        r.set_flags(0x80);
        r.set_lun(p.lun());
        r.set_itt(p.itt());
        r.set_u32(20, NO_TAG);
        self.numbers(&mut r, true);
        r.data = p.data.slice(..p.data.len().min(self.params.max_send_data as usize));
        self.send(r);
        Flow::Continue
    }

    fn task_management(&mut self, p: Pdu) -> Flow {
        let function = p.flags() & 0x7f;
        let response = match function {
            // ABORT TASK: a task still waiting for data or for its turn is dropped; one that
            // already finished is reported as not existing, which tells the initiator so.
            1 => {
                let referenced = p.field20();
                let queued = self.abort_queued(|q| q.itt() == referenced);
                u8::from(self.writes.remove(&referenced).is_none() && queued == 0)
            }
            // ABORT TASK SET, CLEAR TASK SET, LUN RESET, TARGET WARM/COLD RESET.
            2 | 4 | 5 | 6 | 7 => {
                self.writes.clear();
                self.abort_queued(|_| true);
                0
            }
            // CLEAR ACA: ACA is never established (NACA is not supported).
            3 => 0,
            // TASK REASSIGN needs error recovery level 2.
            8 => 4,
            _ => 5,
        };
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_flags(0x80);
        r.bhs[2] = response;
        r.set_itt(p.itt());
        self.numbers(&mut r, true);
        self.send(r);
        if function == 7 {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Aborts queued commands: each becomes a NOP-Out that needs no answer, so its CmdSN still
    /// counts as received and the commands behind it are not held up. Returns how many.
    fn abort_queued(&mut self, which: impl Fn(&Pdu) -> bool) -> usize {
        let mut n = 0;
        for q in self.queued.values_mut().filter(|q| q.opcode() == Some(Opcode::ScsiCommand) && which(q)) {
            let mut nop = Pdu::new(Opcode::NopOut);
            nop.set_itt(NO_TAG);
            nop.set_u32(24, q.sn24());
            *q = nop;
            n += 1;
        }
        n
    }

    /// Text requests: SendTargets (RFC 7143 Appendix C); any other key is not understood.
    fn text(&mut self, p: Pdu) -> Flow {
        let pairs = text::parse(&p.data).unwrap_or_default();
        let mut out = text::Pairs::new();
        for (k, v) in pairs {
            if k == "SendTargets" {
                out.extend(self.send_targets(&v));
            } else {
                out.push((k, "NotUnderstood".into()));
            }
        }
        let mut r = Pdu::new(Opcode::TextResponse);
        r.set_flags(0x80);
        r.set_itt(p.itt());
        r.set_u32(20, NO_TAG);
        self.numbers(&mut r, true);
        let mut data = text::encode(&out);
        // No continuation: a listing longer than the initiator's limit is cut at a whole target.
        while data.len() > self.params.max_send_data as usize && !out.is_empty() {
            out.pop();
            data = text::encode(&out);
        }
        r.data = data.into();
        self.send(r);
        Flow::Continue
    }

    fn send_targets(&self, which: &str) -> text::Pairs {
        let visible = self.access.volumes(&self.identity);
        let names = visible.iter().map(|v| (format!("{}:cleave:{v}", self.iqn_base), v));
        let address = match self.portal {
            Some(SocketAddr::V4(a)) => format!("{a},1"),
            Some(SocketAddr::V6(a)) => format!("[{}]:{},1", a.ip(), a.port()),
            None => String::new(),
        };
        let mut out = text::Pairs::new();
        for (name, volume) in names {
            let wanted = match (self.kind, which) {
                (SessionType::Discovery, "All") => true,
                (SessionType::Normal, "") => self.target.as_deref() == Some(volume),
                (_, w) => w.eq_ignore_ascii_case(&name),
            };
            if wanted {
                out.push(("TargetName".into(), name));
                if !address.is_empty() {
                    out.push(("TargetAddress".into(), address.clone()));
                }
            }
        }
        out
    }

    fn logout(&mut self, p: Pdu) -> Flow {
        let mut r = Pdu::new(Opcode::LogoutResponse);
        r.set_flags(0x80);
        // Removing a connection for recovery needs error recovery level 2.
        r.bhs[2] = if p.flags() & 0x7f == 2 { 2 } else { 0 };
        r.set_itt(p.itt());
        self.numbers(&mut r, true);
        self.send(r);
        Flow::Close
    }
}
