//! Full feature phase on one connection (RFC 7143 §4): command ordering by CmdSN, StatSN,
//! NOP, text (SendTargets); task management and logout are in [`crate::tmf`], SCSI commands
//! and their data in [`crate::command`].
//!
//! One task dispatches: it takes PDUs from the connection's reader, admits commands in CmdSN
//! order into the task set, routes Data-Out, and numbers every response before handing it to
//! the connection's writer, so StatSN follows the order responses are sent in. SCSI commands
//! run concurrently, each on its own tokio task, as their task attributes allow.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::task::{JoinError, JoinSet};
use tracing::debug;

use crate::access::{Access, Identity};
use crate::conn::{self, Out};
use crate::login::SessionType;
use crate::negotiate::Params;
use crate::pdu::{self, Digests, Opcode, Pdu, PduError, BHS_LEN};
use crate::scsi::{Lu, Nexus};
use crate::task::{self, Done, Fence, TaskSet};
use crate::text;
use crate::ConnError;

pub use crate::pdu::NO_TAG;

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
    pdu::parse_owned(bhs, len, rest.into(), d).map(Some).map_err(|e| ConnError::Pdu(e, Box::new(bhs)))
}

/// Resolves when the session is reinstated by a new login; never without a registration.
async fn reinstated(close: Option<&Notify>) {
    match close {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// PDUs read ahead of the dispatcher at most.
const INCOMING: usize = 16;
/// Batches waiting for the writer at most; the dispatcher waits beyond that.
const OUTGOING: usize = 64;

/// A session in full feature phase (one connection per session).
pub struct Session {
    pub(crate) digests: Digests,
    pub(crate) params: Params,
    /// Our declared MaxRecvDataSegmentLength.
    pub(crate) max_recv: usize,
    pub(crate) stat_sn: u32,
    pub(crate) exp_cmd_sn: u32,
    /// Moves on as commands end, so at most `window` are outstanding (RFC 7143 §4.2.2.1).
    pub(crate) max_cmd_sn: u32,
    pub(crate) window: u32,
    /// Commands that arrived ahead of ExpCmdSN, by CmdSN.
    pub(crate) queued: BTreeMap<u32, Pdu>,
    pub(crate) tasks: TaskSet,
    /// SCSI commands executing, each on its own tokio task.
    pub(crate) running: JoinSet<Done>,
    pub(crate) by_id: HashMap<tokio::task::Id, u64>,
    /// Task management and logout responses waiting for aborted tasks to end.
    pub(crate) fences: Vec<Fence>,
    /// A logout was accepted: nothing more is taken.
    pub(crate) logging_out: bool,
    pub(crate) next_ttt: u32,
    pub(crate) kind: SessionType,
    pub(crate) lu: Option<Arc<Lu>>,
    pub(crate) nexus: Nexus,
    pub(crate) identity: Identity,
    pub(crate) access: Arc<dyn Access>,
    pub(crate) target: Option<String>,
    pub(crate) iqn_base: String,
    pub(crate) portal: Option<SocketAddr>,
    /// Numbered PDUs waiting for the next flush, and the budget their data holds.
    pub(crate) out: Vec<Pdu>,
    pub(crate) out_budget: Vec<OwnedSemaphorePermit>,
    pub(crate) writer: Option<mpsc::Sender<Out>>,
    /// Notified when a new login reinstates this session: it ends.
    pub(crate) close: Option<Arc<Notify>>,
}

/// What the dispatcher waits for.
enum Event {
    Reinstated,
    Ended(Result<(tokio::task::Id, Done), JoinError>),
    Granted(Option<OwnedSemaphorePermit>),
    Pdu(Option<Result<Pdu, ConnError>>),
}

impl Session {
    /// Serves until logout, EOF or a fatal error. Commands still running then end first, so
    /// none of them touches the volume after the session is gone.
    pub async fn run<S>(mut self, stream: S) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let (in_tx, mut incoming) = mpsc::channel(INCOMING);
        let (out_tx, out_rx) = mpsc::channel(OUTGOING);
        let reader = tokio::spawn(conn::read_in(rd, self.digests, self.max_recv, in_tx));
        let writer = tokio::spawn(conn::write_out(wr, self.digests, out_rx));
        self.writer = Some(out_tx);
        let served = self.serve(&mut incoming).await;
        while self.running.join_next().await.is_some() {}
        self.writer = None;
        let written = writer.await.map_err(std::io::Error::other).and_then(|r| r);
        reader.abort();
        let _ = reader.await;
        // A dead connection shows first as the writer's error.
        written.map_err(ConnError::from).and(served)
    }

    async fn serve(&mut self, incoming: &mut mpsc::Receiver<Result<Pdu, ConnError>>) -> Result<(), ConnError> {
        loop {
            let event = tokio::select! {
                biased;
                () = reinstated(self.close.as_deref()) => Event::Reinstated,
                Some(ended) = self.running.join_next_with_id() => Event::Ended(ended),
                permit = task::granted(&mut self.tasks.grant) => Event::Granted(permit),
                pdu = incoming.recv() => Event::Pdu(pdu),
            };
            let flow = match event {
                // Its connection is dropped; commands still running end first (`run`).
                Event::Reinstated => return Ok(()),
                Event::Ended(ended) => self.finished(ended),
                Event::Granted(permit) => {
                    if let Some(seq) = permit.and_then(|p| self.tasks.granted(p)) {
                        self.advance(seq);
                    }
                    Flow::Continue
                }
                Event::Pdu(None) => return Ok(()),
                Event::Pdu(Some(Ok(p))) => self.on_pdu(p),
                Event::Pdu(Some(Err(ConnError::Pdu(PduError::DataDigest, bhs)))) => {
                    self.reject(RejectReason::DataDigest, &bhs);
                    Flow::Continue
                }
                Event::Pdu(Some(Err(ConnError::Pdu(e @ PduError::DataTooLong { .. }, bhs)))) => {
                    self.reject(RejectReason::Protocol, &bhs);
                    self.flush().await?;
                    return Err(ConnError::Pdu(e, bhs));
                }
                Event::Pdu(Some(Err(e))) => return Err(e),
            };
            self.progress();
            self.flush().await?;
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    pub(crate) fn send(&mut self, p: Pdu) {
        self.out.push(p);
    }

    /// Hands what is waiting to the writer; an error when the connection is gone.
    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = Out { pdus: std::mem::take(&mut self.out), budget: std::mem::take(&mut self.out_budget) };
        match &self.writer {
            Some(w) if w.send(out).await.is_ok() => Ok(()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()),
        }
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
        p.set_u32(32, self.max_cmd_sn);
    }

    /// A command that held a CmdSN slot ended: one more may come.
    pub(crate) fn release(&mut self, slot: bool) {
        if slot {
            self.max_cmd_sn = self.max_cmd_sn.wrapping_add(1);
        }
    }

    /// Whether a CmdSN is one the initiator may send now: ExpCmdSN to MaxCmdSN (none when
    /// MaxCmdSN is ExpCmdSN - 1, a full window).
    pub(crate) fn in_window(&self, sn: u32) -> bool {
        (sn == self.exp_cmd_sn || sn_after(sn, self.exp_cmd_sn)) && !sn_after(sn, self.max_cmd_sn)
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

    fn on_pdu(&mut self, p: Pdu) -> Flow {
        if self.logging_out {
            // The initiator sends nothing after a logout (RFC 7143 §11.14).
            return Flow::Continue;
        }
        match p.opcode() {
            Some(Opcode::DataOut) => {
                self.data_out(p);
                Flow::Continue
            }
            Some(Opcode::ScsiCommand | Opcode::NopOut | Opcode::TaskMgmtRequest | Opcode::TextRequest)
            | Some(Opcode::LogoutRequest) => self.ordered(p),
            Some(Opcode::SnackRequest) => {
                // Error recovery level 0 has no SNACK.
                self.reject(RejectReason::Snack, &p.bhs);
                Flow::Continue
            }
            Some(_) => {
                self.reject(RejectReason::Protocol, &p.bhs);
                Flow::Continue
            }
            None => {
                self.reject(RejectReason::NotSupported, &p.bhs);
                Flow::Continue
            }
        }
    }

    /// CmdSN ordering (RFC 7143 §4.2.2.1): immediate PDUs are taken now; others in CmdSN
    /// order, queued when early, dropped silently outside the window.
    fn ordered(&mut self, p: Pdu) -> Flow {
        let mut flow = if p.immediate() {
            self.command(p, false)
        } else {
            let sn = p.sn24();
            if !self.in_window(sn) {
                debug!(cmd_sn = sn, exp_cmd_sn = self.exp_cmd_sn, "PDU outside the CmdSN window dropped");
                return Flow::Continue;
            }
            if sn != self.exp_cmd_sn {
                self.queued.insert(sn, p);
                return Flow::Continue;
            }
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.command(p, true)
        };
        // An immediate ABORT TASK may have filled the gap in front of the queue.
        while flow == Flow::Continue {
            let Some(next) = self.queued.remove(&self.exp_cmd_sn) else { break };
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            flow = self.command(next, true);
        }
        flow
    }

    /// Takes one PDU in its turn; `slot` when it came in CmdSN order. Only SCSI commands keep
    /// their slot past this.
    fn command(&mut self, p: Pdu, slot: bool) -> Flow {
        if p.opcode() == Some(Opcode::ScsiCommand) {
            self.scsi_command(p, slot);
            return Flow::Continue;
        }
        self.release(slot);
        match p.opcode() {
            Some(Opcode::NopOut) => self.nop_out(p),
            Some(Opcode::TaskMgmtRequest) => self.task_management(p),
            Some(Opcode::TextRequest) => self.text(p),
            _ => self.logout(p),
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
}
