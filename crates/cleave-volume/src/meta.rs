//! Volume configuration, the superblock, and where objects live on a target.
//!
//! The superblock is stored on every target, so that any M targets plus the master
//! key rebuild a volume. It holds no secret in the clear: group keys are wrapped by
//! the master key, the volume keyring by the group keys, and a MAC under a key
//! derived from the master key catches any tampering.

use std::collections::BTreeMap;

use cleave_split::keys::{GroupKey, MasterKey, VolumeKeySlots, WrappedKey};
use cleave_split::{Keyring, MAX_SHARES};
use serde::{Deserialize, Serialize};

use crate::VolumeError;

/// When a FLUSH or FUA is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once durable (fsync) in the local cache; destage follows in the background.
    #[default]
    Local,
    /// Once destaged to the targets and the journal record is committed.
    Dispersed,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Durability::Local),
            "dispersed" => Ok(Durability::Dispersed),
            _ => Err(format!("unknown durability {s:?}: use local or dispersed")),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Local => "local",
            Durability::Dispersed => "dispersed",
        })
    }
}

/// The largest volume: 1 EiB. Byte and chunk arithmetic (offset + length, chunk × chunk
/// size) stays far from u64 overflow; file systems refuse cache files smaller than this.
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;

/// What defines a volume. Targets are in share-index order: target i holds share i.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    pub name: String,
    pub uuid: String,
    pub size: u64,
    pub chunk_size: u32,
    pub m: u8,
    pub n: u8,
    pub durability: Durability,
    pub targets: Vec<String>,
    /// Shares that must be stored before a write counts; None: the default, see
    /// [`VolumeConfig::write_quorum`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<u8>,
    /// Store all-zero chunks like any other. By default they store nothing, which saves
    /// space but lets a target count how many chunks hold data (not which: names are opaque).
    #[serde(default)]
    pub store_zero_chunks: bool,
}

impl VolumeConfig {
    pub fn validate(&self) -> Result<(), VolumeError> {
        let bad = |s: String| Err(VolumeError::Config(s));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return bad(format!("name {:?}: use 1-64 letters, digits, '-', '_' or '.'", self.name));
        }
        let (m, n) = (self.m as usize, self.n as usize);
        if m == 0 || m > n || n > MAX_SHARES {
            return bad(format!("{m}-of-{n}: need 1 <= M <= N <= {MAX_SHARES}"));
        }
        if self.targets.len() != n {
            return bad(format!("{} targets given for N = {n}", self.targets.len()));
        }
        if !(4096..=(64 << 20)).contains(&self.chunk_size) || !self.chunk_size.is_power_of_two() {
            return bad(format!("chunk size {}: use a power of two from 4 KiB to 64 MiB", self.chunk_size));
        }
        if self.size == 0 || !self.size.is_multiple_of(512) || self.size > MAX_VOLUME_SIZE {
            return bad(format!("size {}: use a positive multiple of 512 bytes, at most 1 EiB", self.size));
        }
        if let Some(q) = self.write_quorum {
            if (q as usize) < m || (q as usize) > n {
                return bad(format!("write quorum {q}: use a value from M ({m}) to N ({n})"));
            }
        }
        if self.uuid_bytes().is_none() {
            return bad(format!("uuid {:?} is not 32 hex digits", self.uuid));
        }
        Ok(())
    }

    pub fn uuid_bytes(&self) -> Option<[u8; 16]> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(self.uuid.replace('-', ""), &mut out).ok()?;
        Some(out)
    }

    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size as u64)
    }

    /// Shares that must be stored before a write counts. The default, max(M, min(N-1, M+1)),
    /// keeps one share of margin over M where it can, and still lets a volume with one
    /// target down take writes (as a degraded RAID does): 2-of-3 writes to 2, 3-of-5 to 4.
    pub fn write_quorum(&self) -> usize {
        match self.write_quorum {
            Some(q) => q as usize,
            None => default_write_quorum(self.m as usize, self.n as usize),
        }
    }
}

/// max(M, min(N-1, M+1)).
pub fn default_write_quorum(m: usize, n: usize) -> usize {
    m.max((n.saturating_sub(1)).min(m + 1))
}

/// Object names on a target. Every object is create-only and never rewritten.
pub mod names {
    pub fn chunk_prefix(uuid: &str) -> String {
        format!("{uuid}/chunks/")
    }
    pub fn chunk(uuid: &str, chunk: u64, generation: u64) -> String {
        format!("{uuid}/chunks/{chunk:012x}/{generation:016x}")
    }
    pub fn journal_prefix(uuid: &str) -> String {
        format!("{uuid}/journal/")
    }
    pub fn journal(uuid: &str, seq: u64) -> String {
        format!("{uuid}/journal/{seq:016x}")
    }
    pub fn checkpoint_prefix(uuid: &str) -> String {
        format!("{uuid}/checkpoint/")
    }
    pub fn checkpoint(uuid: &str, seq: u64) -> String {
        format!("{uuid}/checkpoint/{seq:016x}")
    }
    pub fn superblock_prefix(uuid: &str) -> String {
        format!("{uuid}/superblock/")
    }
    pub fn superblock(uuid: &str, version: u64) -> String {
        format!("{uuid}/superblock/{version:016x}")
    }
    /// The hex number after the last '/' of a name.
    pub fn trailing_number(key: &str) -> Option<u64> {
        u64::from_str_radix(key.rsplit('/').next()?, 16).ok()
    }
}

/// The group that `cleave serve` creates for its administrator.
pub const ADMIN_GROUP: &str = "admin";

/// Everything needed to open a volume given the master key, stored on every target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Superblock {
    pub format: u32,
    /// Increases with every change; the highest readable one wins.
    pub version: u64,
    pub config: VolumeConfig,
    /// Group keys wrapped by the master key.
    pub groups: BTreeMap<String, WrappedKey>,
    /// The volume keyring, wrapped once per group with access.
    pub slots: VolumeKeySlots,
}

const SUPERBLOCK_PURPOSE: &str = "cleave superblock v2";

/// A superblock as stored from format 2 on.
#[derive(Serialize, Deserialize)]
struct EncryptedSuperblock {
    format: u32,
    sealed: cleave_split::keys::WrappedKey,
}

/// Format 1: readable JSON with a MAC (read for volumes made by older versions).
#[derive(Serialize, Deserialize)]
struct SealedSuperblock {
    superblock: Superblock,
    mac: String,
}

impl Superblock {
    /// A new volume: a fresh keyring, reachable by `group`.
    pub fn create(
        config: VolumeConfig,
        master: &MasterKey,
        group: &str,
        group_key: &GroupKey,
    ) -> Result<(Self, Keyring), VolumeError> {
        config.validate()?;
        let keyring = Keyring::generate()?;
        let uuid = config.uuid_bytes().expect("validated");
        let mut slots = VolumeKeySlots::new(uuid);
        slots.grant(&keyring, group, group_key)?;
        let groups = BTreeMap::from([(group.to_string(), master.wrap_group(group, group_key)?)]);
        Ok((Superblock { format: 1, version: 1, config, groups, slots }, keyring))
    }

    /// Opens the keyring through any group whose key the master key unwraps.
    pub fn unlock(&self, master: &MasterKey) -> Result<Keyring, VolumeError> {
        let mut last = None;
        for (group, wrapped) in &self.groups {
            match master.unwrap_group(group, wrapped).and_then(|gk| self.slots.unlock(group, &gk)) {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(VolumeError::Key).unwrap_or_else(|| VolumeError::Key(cleave_split::KeyError::Erased)))
    }

    /// Gives `group` a key slot (the next version must then be published).
    pub fn grant_group(&mut self, master: &MasterKey, group: &str, group_key: &GroupKey) -> Result<(), VolumeError> {
        let keyring = self.unlock(master)?;
        self.slots.grant(&keyring, group, group_key)?;
        self.groups.insert(group.to_string(), master.wrap_group(group, group_key)?);
        self.version += 1;
        Ok(())
    }

    /// Removes `group`'s key slot; returns how many slots remain (0: the volume is crypto-erased
    /// once this version replaces the older ones everywhere).
    pub fn revoke_group(&mut self, group: &str) -> usize {
        if self.slots.revoke(group) | self.groups.remove(group).is_some() {
            self.version += 1;
        }
        self.slots.groups().count()
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.slots.groups().any(|g| g == group)
    }

    fn mac(master: &MasterKey, body: &[u8]) -> String {
        let key = master.derive("cleave superblock mac v1");
        hex::encode(blake3::keyed_hash(key.expose(), body).as_bytes())
    }

    /// The stored form: everything encrypted under a key derived from the master key, so a
    /// target learns nothing of the volume (not its name, size or other targets).
    pub fn seal(&self, master: &MasterKey) -> Result<Vec<u8>, VolumeError> {
        let body = serde_json::to_vec(self).map_err(|e| VolumeError::Metadata(e.to_string()))?;
        let sealed = master.seal_bytes(SUPERBLOCK_PURPOSE, &body)?;
        serde_json::to_vec(&EncryptedSuperblock { format: 2, sealed }).map_err(|e| VolumeError::Metadata(e.to_string()))
    }

    /// Parses, decrypts and authenticates a stored superblock (format 2, or the plain
    /// format 1 with a MAC of older versions).
    pub fn open(bytes: &[u8], master: &MasterKey) -> Result<Self, VolumeError> {
        let sb: Superblock = match serde_json::from_slice::<EncryptedSuperblock>(bytes) {
            Ok(e) if e.format == 2 => {
                let body = master
                    .open_bytes(SUPERBLOCK_PURPOSE, &e.sealed)
                    .map_err(|_| VolumeError::Metadata("superblock does not decrypt (wrong key or tampered)".into()))?;
                serde_json::from_slice(&body).map_err(|e| VolumeError::Metadata(format!("superblock: {e}")))?
            }
            _ => Self::open_plain(bytes, master)?,
        };
        sb.config.validate()?;
        Ok(sb)
    }

    fn open_plain(bytes: &[u8], master: &MasterKey) -> Result<Self, VolumeError> {
        let sealed: SealedSuperblock =
            serde_json::from_slice(bytes).map_err(|e| VolumeError::Metadata(format!("superblock: {e}")))?;
        let body = serde_json::to_vec(&sealed.superblock).map_err(|e| VolumeError::Metadata(e.to_string()))?;
        let want = Self::mac(master, &body);
        if !cleave_split::constant_time_eq(want.as_bytes(), sealed.mac.as_bytes()) {
            return Err(VolumeError::Metadata("superblock MAC does not verify (wrong key or tampered)".into()));
        }
        Ok(sealed.superblock)
    }
}
