//! The SCSI disk a volume appears as (SPC-4, SBC-3): one logical unit over a [`BlockDevice`].
//! [`Lu::execute`] takes a CDB and its data-out buffer and returns status, data-in and sense.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cleave_nbd::BlockDevice;

use crate::access::{Access, Alua, AluaState, ReservationsAt, Rights};

mod inquiry;
pub mod io;
mod mode;
pub mod reserve;
pub mod sense;

pub use reserve::{ReservationType, Reservations};
pub use sense::{Key, Sense, Status};

/// Logical block size presented to initiators.
pub const BLOCK: u32 = 512;
/// Largest read or write one command may move (advertised in the Block Limits VPD page).
pub const MAX_TRANSFER: u32 = 32 << 20;
/// Largest WRITE SAME or UNMAP range, in blocks (one device call is at most 4 GiB - 1).
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Block descriptors one UNMAP may carry.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// Data-in, before truncation to the initiator's expected length.
    pub data: Bytes,
    pub sense: Option<Sense>,
}

impl Outcome {
    pub fn good(data: impl Into<Bytes>) -> Outcome {
        Outcome { status: Status::Good, data: data.into(), sense: None }
    }
    pub fn check(sense: Sense) -> Outcome {
        Outcome { status: Status::CheckCondition, data: Bytes::new(), sense: Some(sense) }
    }
}

/// A command's failure, carried with `?` until it becomes CHECK CONDITION.
pub type Result<T> = std::result::Result<T, Sense>;

/// Identity strings the INQUIRY pages report.
#[derive(Debug, Clone)]
pub struct Names {
    pub volume: String,
    /// Unit serial number (VPD 0x80); stable across restarts.
    pub serial: String,
    /// The target name, for the SCSI name string designator.
    pub target: String,
}

/// One logical unit (LUN 0 of its target).
pub struct Lu {
    device: Arc<dyn BlockDevice>,
    /// The initiator's rights are read-only; the device may also turn read-only and back (a
    /// mirror's secondary, promoted), so that is asked each time.
    rights_read_only: bool,
    names: Names,
    blocks: u64,
    /// Physical block exponent: preferred block size as a power of two of logical blocks.
    physical_exp: u8,
    access: Arc<dyn Access>,
    shared: Arc<Shared>,
}

/// State of a volume that every session on it shares (on this gateway).
pub struct Shared {
    /// WCE of the caching mode page.
    write_cache: AtomicBool,
    /// COMPARE AND WRITE takes it exclusively, other writes shared: it is atomic against them.
    atomic: tokio::sync::RwLock<()>,
    reservations: std::sync::Mutex<ReservationsAt>,
    /// Unit attentions that changes of the reservations owe initiator ports, oldest first.
    owed: std::sync::Mutex<HashMap<String, Vec<Sense>>>,
}

impl Shared {
    /// Starting from the reservations the host kept.
    pub fn new(reservations: ReservationsAt) -> Shared {
        Shared {
            write_cache: AtomicBool::new(true),
            atomic: tokio::sync::RwLock::new(()),
            reservations: std::sync::Mutex::new(reservations),
            owed: std::sync::Mutex::default(),
        }
    }

    /// Takes the reservations another gateway stored, unless those held are as new.
    pub fn reservations_changed(&self, stored: ReservationsAt) {
        let mut held = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        self.take_newer(&mut held, stored);
    }

    /// Makes `stored`, another gateway's change, the reservations `held` here, unless those
    /// are as new, and owes its registrants what it tells them.
    fn take_newer(&self, held: &mut ReservationsAt, stored: ReservationsAt) {
        if stored.version > held.version {
            self.owe(reserve::owed(&held.state, &stored.state, None));
            *held = stored;
        }
    }

    /// Queues unit attentions for initiator ports (a few per port at most: the oldest go).
    /// They wait for the port's next command here, in a session that exists now or a later
    /// one (a host that logs in again learns it was preempted).
    fn owe(&self, attentions: Vec<(String, Sense)>) {
        const KEPT: usize = 4;
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        for (port, sense) in attentions {
            let queue = owed.entry(port).or_default();
            if queue.len() == KEPT {
                queue.remove(0);
            }
            queue.push(sense);
        }
    }

    /// The oldest unit attention owed to `port`.
    fn take_owed(&self, port: &str) -> Option<Sense> {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let queue = owed.get_mut(port)?;
        let sense = (!queue.is_empty()).then(|| queue.remove(0));
        if queue.is_empty() {
            owed.remove(port);
        }
        sense
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new(ReservationsAt::default())
    }
}

/// Per-session (I_T nexus) state the command set needs.
#[derive(Debug, Default)]
pub struct Nexus {
    /// The initiator port, `<initiator name>,i,0x<ISID>`: who holds registrations.
    pub port: String,
    /// The ALUA generation this session has been told about.
    pub alua_seen: Option<u64>,
}

impl Lu {
    /// `shared` must be the same for every session on the volume (see [`Shared`]).
    pub fn new(
        device: Arc<dyn BlockDevice>,
        rights: Rights,
        names: Names,
        access: Arc<dyn Access>,
        shared: Arc<Shared>,
    ) -> Lu {
        let blocks = device.size() / BLOCK as u64;
        let pref = device.preferred_block_size().clamp(BLOCK, 1 << 20);
        let physical_exp = (pref / BLOCK).checked_ilog2().unwrap_or(0) as u8;
        let rights_read_only = rights == Rights::ReadOnly;
        Lu { device, rights_read_only, names, blocks, physical_exp, access, shared }
    }

    fn read_only(&self) -> bool {
        self.rights_read_only || self.device.read_only()
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn alua(&self) -> Alua {
        self.access.alua(&self.names.volume)
    }

    fn local_state(&self, alua: &Alua) -> AluaState {
        alua.groups.iter().find(|g| g.id == alua.local_group).map_or(AluaState::ActiveOptimized, |g| g.state)
    }

    /// Runs one command. `data` is the data-out buffer the initiator sent.
    pub async fn execute(&self, nexus: &mut Nexus, cdb: &[u8], data: Bytes) -> Outcome {
        if let Some(s) = self.attention(nexus, cdb.first().copied().unwrap_or(0xff)) {
            return Outcome::check(s);
        }
        self.run(&nexus.port, cdb, data).await
    }

    /// Runs one command past [`Lu::attention`], for the initiator port `port`. Commands of a
    /// session may run at once; a session asks for attention in CmdSN order first.
    pub async fn run(&self, port: &str, cdb: &[u8], data: Bytes) -> Outcome {
        let op = cdb.first().copied().unwrap_or(0xff);
        if self.reservation_conflict(port, op) {
            return Outcome { status: Status::ReservationConflict, data: Bytes::new(), sense: None };
        }
        match self.dispatch(port, op, cdb, data).await {
            Ok(o) => o,
            Err(s) => Outcome::check(s),
        }
    }

    /// A pending unit attention, or an ALUA state that refuses media access.
    pub fn attention(&self, nexus: &mut Nexus, op: u8) -> Option<Sense> {
        let alua = self.alua();
        // INQUIRY, REPORT LUNS and REQUEST SENSE never report a unit attention (SAM-5 §5.14).
        let exempt = matches!(op, 0x12 | 0xa0 | 0x03);
        match nexus.alua_seen {
            None => nexus.alua_seen = Some(alua.generation),
            Some(g) if g != alua.generation && !exempt => {
                nexus.alua_seen = Some(alua.generation);
                return Some(Sense::ALUA_CHANGED);
            }
            Some(_) => {}
        }
        if let Some(s) = (!exempt).then(|| self.shared.take_owed(&nexus.port)).flatten() {
            return Some(s);
        }
        let media = io::is_media_access(op);
        match self.local_state(&alua) {
            AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => None,
            AluaState::Transitioning if media => Some(Sense::ALUA_TRANSITIONING),
            AluaState::Standby if media => Some(Sense::ALUA_STANDBY),
            AluaState::Unavailable if media => Some(Sense::ALUA_UNAVAILABLE),
            _ => None,
        }
    }

    async fn dispatch(&self, port: &str, op: u8, cdb: &[u8], data: Bytes) -> Result<Outcome> {
        let cdb = Cdb(cdb);
        match op {
            0x00 | 0x1b | 0x1e => Ok(Outcome::good(Bytes::new())),
            0x03 => inquiry::request_sense(&cdb),
            0x12 => self.inquiry(&cdb),
            0xa0 => inquiry::report_luns(&cdb),
            0x25 => self.read_capacity10(),
            0x9e if cdb.byte(1) & 0x1f == 0x10 => self.read_capacity16(&cdb),
            0xa3 if cdb.byte(1) & 0x1f == 0x0a => self.report_target_port_groups(&cdb),
            0x1a | 0x5a => self.mode_sense(&cdb),
            0x15 | 0x55 => self.mode_select(&cdb, &data),
            0x5e => self.persistent_reserve_in(&cdb),
            0x5f => self.persistent_reserve_out(port, &cdb, &data),
            _ => self.dispatch_io(op, &cdb, data).await,
        }
    }
}

/// Big-endian fields of a CDB; bytes past its end read as zero (a short CDB cannot panic).
pub struct Cdb<'a>(pub &'a [u8]);

impl Cdb<'_> {
    pub fn byte(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
    pub fn be(&self, at: usize, len: usize) -> u64 {
        (at..at + len).fold(0, |acc, i| acc << 8 | self.byte(i) as u64)
    }
}

/// The first `alloc` bytes of `data`: responses are cut to the allocation length.
pub fn truncate(mut data: Vec<u8>, alloc: u64) -> Bytes {
    data.truncate(alloc.min(usize::MAX as u64) as usize);
    data.into()
}

/// Checks a block range against the capacity.
pub fn check_range(lba: u64, blocks: u64, capacity: u64) -> Result<()> {
    match lba.checked_add(blocks) {
        Some(end) if lba <= capacity && end <= capacity => Ok(()),
        _ => Err(Sense::LBA_OUT_OF_RANGE),
    }
}

#[cfg(test)]
mod tests;
