//! What the host supplies: volumes, who may see and use them, CHAP secrets and ALUA state.
//! The gateway implements [`Access`] with Cleave's clients and groups; tests use [`StaticAccess`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cleave_nbd::BlockDevice;

pub use crate::scsi::{ReservationType, Reservations};

/// What an initiator may do with a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    ReadWrite,
    /// Writes fail with DATA PROTECT sense.
    ReadOnly,
}

/// Who is logging in, as far as login has established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The InitiatorName key (lowercased, as iSCSI names compare case-insensitively).
    pub initiator: String,
    /// The CHAP name the initiator proved a secret for; None when it logged in without CHAP.
    pub chap_name: Option<String>,
    pub addr: Option<SocketAddr>,
}

/// Asymmetric access state of a target port group (SPC-4 §6.37).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluaState {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Transitioning,
}

impl AluaState {
    pub fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
            AluaState::Standby => 0x2,
            AluaState::Unavailable => 0x3,
            AluaState::Transitioning => 0xf,
        }
    }
}

/// One target port group: a gateway, with the relative port ids of its portals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    pub id: u16,
    pub state: AluaState,
    pub ports: Vec<u16>,
}

/// The ALUA view of one volume from this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alua {
    /// The group and relative port id of this gateway's portal.
    pub local_group: u16,
    pub local_port: u16,
    pub groups: Vec<PortGroup>,
    /// Bumped by the host on every state change; a session that sees it change reports the
    /// ASYMMETRIC ACCESS STATE CHANGED unit attention once.
    pub generation: u64,
}

impl Default for Alua {
    /// One gateway: one active/optimized group with one port.
    fn default() -> Self {
        Alua {
            local_group: 1,
            local_port: 1,
            groups: vec![PortGroup { id: 1, state: AluaState::ActiveOptimized, ports: vec![1] }],
            generation: 0,
        }
    }
}

/// A volume opened for one session.
#[derive(Clone)]
pub struct Opened {
    pub device: Arc<dyn BlockDevice>,
    pub rights: Rights,
    /// Stable identity of the volume; the NAA identifier and unit serial number derive from it.
    pub serial: String,
}

/// Everything the target asks of its host. Volume names are iSCSI-name safe (lowercase letters,
/// digits, '-', '.'); the target name of volume `v` is `<iqn base>:cleave:v` (see docs/iscsi.md).
pub trait Access: Send + Sync {
    /// Volumes this initiator may see: SendTargets lists them, and login to others is refused.
    fn volumes(&self, who: &Identity) -> Vec<String>;
    /// Whether the initiator must authenticate with CHAP. Asked before it names a target.
    fn chap_required(&self, initiator: &str) -> bool;
    /// The secret `initiator` must prove under `chap_name`; None refuses the login.
    fn chap_secret(&self, initiator: &str, chap_name: &str) -> Option<Vec<u8>>;
    /// The name and secret the target answers a mutual CHAP challenge with; None refuses mutual CHAP.
    fn target_secret(&self, _initiator: &str) -> Option<(String, Vec<u8>)> {
        None
    }
    /// The volume's device and the initiator's rights on it; None refuses (as "not found").
    fn open(&self, volume: &str, who: &Identity) -> Option<Opened>;
    /// ALUA port groups for REPORT TARGET PORT GROUPS and VPD 0x83.
    fn alua(&self, _volume: &str) -> Alua {
        Alua::default()
    }
    /// Persistent reservations as last saved, read when a volume's first session starts.
    fn reservations(&self, _volume: &str) -> Option<ReservationsAt> {
        None
    }
    /// Stores `next` in place of `read`, before the command completes, so registrations and
    /// reservations survive restarts and every gateway sharing the store applies them. Only
    /// while the stored state is still at `read`'s version: otherwise [`Saved::Changed`] with
    /// what is stored now, and the command is applied again to that.
    fn save_reservations(&self, _volume: &str, read: &ReservationsAt, _next: &Reservations) -> Saved {
        Saved::Stored(read.version + 1)
    }
}

/// A volume's reservations at a version of the host's store: versions rise with every change,
/// so a newer state never gives way to an older one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservationsAt {
    pub state: Reservations,
    /// 0 when nothing is stored yet.
    pub version: u64,
}

/// What became of [`Access::save_reservations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Stored, at this version.
    Stored(u64),
    /// Another gateway changed them first: this is what is stored now.
    Changed(ReservationsAt),
    /// The store could not be reached: nothing changed.
    Failed,
}

/// A fixed table, for tests and simple embeddings.
#[derive(Default)]
pub struct StaticAccess {
    pub volumes: HashMap<String, Arc<dyn BlockDevice>>,
    /// initiator name → (CHAP name, secret). Initiators listed here must use CHAP.
    pub chap: HashMap<String, (String, Vec<u8>)>,
    /// Mutual CHAP credentials of the target.
    pub target_chap: Option<(String, Vec<u8>)>,
    /// Initiators with read-only rights; everyone else may write.
    pub read_only: Vec<String>,
    /// When set, only these initiators see anything.
    pub allowed: Option<Vec<String>>,
    /// Saved persistent reservations, by volume.
    pub reservations: Mutex<HashMap<String, ReservationsAt>>,
}

impl Access for StaticAccess {
    fn volumes(&self, who: &Identity) -> Vec<String> {
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&who.initiator)) {
            return Vec::new();
        }
        let mut v: Vec<String> = self.volumes.keys().cloned().collect();
        v.sort();
        v
    }
    fn chap_required(&self, initiator: &str) -> bool {
        self.chap.contains_key(initiator)
    }
    fn chap_secret(&self, initiator: &str, chap_name: &str) -> Option<Vec<u8>> {
        self.chap.get(initiator).filter(|(n, _)| n == chap_name).map(|(_, s)| s.clone())
    }
    fn target_secret(&self, _initiator: &str) -> Option<(String, Vec<u8>)> {
        self.target_chap.clone()
    }
    fn open(&self, volume: &str, who: &Identity) -> Option<Opened> {
        if !self.volumes(who).iter().any(|v| v == volume) {
            return None;
        }
        let rights = if self.read_only.contains(&who.initiator) { Rights::ReadOnly } else { Rights::ReadWrite };
        Some(Opened { device: self.volumes.get(volume)?.clone(), rights, serial: volume.to_owned() })
    }
    fn reservations(&self, volume: &str) -> Option<ReservationsAt> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner()).get(volume).cloned()
    }
    fn save_reservations(&self, volume: &str, read: &ReservationsAt, next: &Reservations) -> Saved {
        let mut saved = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        let now = saved.entry(volume.to_owned()).or_default();
        if now.version != read.version {
            return Saved::Changed(now.clone());
        }
        *now = ReservationsAt { state: next.clone(), version: read.version + 1 };
        Saved::Stored(now.version)
    }
}
