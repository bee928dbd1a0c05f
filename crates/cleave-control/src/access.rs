//! Who may reach which volume: clients (hosts identified by a certificate), groups
//! (communities of interest) and their grants (read-write or read-only, optionally
//! only on byte ranges). Pure logic; the gateway persists the [`Registry`] and asks
//! it for [`Rights`] on every NBD connection, and the rights on every request. iSCSI
//! initiators and CHAP secrets are in [`crate::initiators`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::initiators::{Chap, Initiator, Secret};

/// The group whose members are local administrators: a volume it can reach is open to
/// unauthenticated clients on loopback.
pub const LOCAL_GROUP: &str = "admin";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("name {0:?} is not allowed: use 1-64 of a-z A-Z 0-9 . _ -")]
    BadName(String),
    #[error("client {0:?} already exists")]
    ClientExists(String),
    #[error("no client {0:?}")]
    NoClient(String),
    #[error("group {0:?} already exists")]
    GroupExists(String),
    #[error("no group {0:?}")]
    NoGroup(String),
    #[error("region {offset}+{length} is empty or overflows")]
    BadRegion { offset: u64, length: u64 },
    #[error("initiator name {0:?} is not an iSCSI name: iqn., eui. or naa., then a-z 0-9 - . : only")]
    BadInitiator(String),
    #[error("initiator {initiator:?} already belongs to client {client:?}")]
    InitiatorTaken { initiator: String, client: String },
    #[error("client {client:?} has no initiator {initiator:?}")]
    NoInitiator { client: String, initiator: String },
    #[error(
        "client {0:?} has no CHAP secret: make one first (cleave client chap), or allow the initiator without CHAP"
    )]
    NoChapSecret(String),
}

/// A host that attaches disks, known by the SHA-256 fingerprint of its certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    pub fingerprint: String,
    pub created_unix_ms: u64,
    /// The client's iSCSI CHAP secrets, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    ReadWrite,
    ReadOnly,
}

/// Bytes `[offset, offset + length)` of a volume.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema)]
pub struct Region {
    pub offset: u64,
    pub length: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// What a group may do on one volume. No regions means the whole volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Grant {
    pub mode: Mode,
    #[serde(default)]
    pub regions: Vec<Region>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Group {
    pub clients: BTreeSet<String>,
    /// Volume name → grant.
    pub grants: BTreeMap<String, Grant>,
}

/// Byte ranges of one volume: everything, or a sorted, merged list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    All,
    Some(Vec<Region>),
}

impl Ranges {
    fn none() -> Self {
        Ranges::Some(Vec::new())
    }

    fn add(&mut self, grant_regions: &[Region]) {
        match self {
            Ranges::All => {}
            Ranges::Some(_) if grant_regions.is_empty() => *self = Ranges::All,
            Ranges::Some(list) => {
                list.extend_from_slice(grant_regions);
                list.sort();
                let mut merged: Vec<Region> = Vec::with_capacity(list.len());
                for r in list.drain(..) {
                    match merged.last_mut() {
                        Some(last) if r.offset <= last.end() => {
                            last.length = last.length.max(r.end() - last.offset);
                        }
                        _ => merged.push(r),
                    }
                }
                *list = merged;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Ranges::Some(l) if l.is_empty())
    }

    /// Whether `[offset, offset + len)` lies wholly inside. Empty requests are covered
    /// only where their offset is.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else { return false };
        match self {
            Ranges::All => true,
            // Merged ranges never touch, so one of them must hold the whole request.
            Ranges::Some(list) => list.iter().any(|r| r.offset <= offset && end <= r.end() && offset < r.end()),
        }
    }
}

/// What one identity may do on one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    pub read: Ranges,
    pub write: Ranges,
}

impl Rights {
    pub fn full() -> Self {
        Rights { read: Ranges::All, write: Ranges::All }
    }

    pub fn is_none(&self) -> bool {
        self.read.is_empty() && self.write.is_empty()
    }

    pub fn read_only(&self) -> bool {
        self.write.is_empty()
    }

    fn add(&mut self, grant: &Grant) {
        self.read.add(&grant.regions);
        if grant.mode == Mode::ReadWrite {
            self.write.add(&grant.regions);
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A client whose certificate was verified and found in the registry.
    Client(String),
    /// No certificate, on loopback: a local administrator.
    Local,
}

/// Clients and groups. Serialized as the gateway's access database.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registry {
    pub clients: BTreeMap<String, Client>,
    pub groups: BTreeMap<String, Group>,
    /// iSCSI initiator name → the client it logs in as.
    #[serde(default)]
    pub initiators: BTreeMap<String, Initiator>,
}

pub fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AccessError::BadName(name.to_string()))
    }
}

impl Registry {
    pub fn add_client(&mut self, client: Client) -> Result<(), AccessError> {
        check_name(&client.name)?;
        if self.clients.contains_key(&client.name) {
            return Err(AccessError::ClientExists(client.name));
        }
        self.clients.insert(client.name.clone(), client);
        Ok(())
    }

    /// Removes a client and its memberships; its certificate stops working at once.
    pub fn remove_client(&mut self, name: &str) -> Result<Client, AccessError> {
        let c = self.clients.remove(name).ok_or_else(|| AccessError::NoClient(name.to_string()))?;
        for g in self.groups.values_mut() {
            g.clients.remove(name);
        }
        self.initiators.retain(|_, i| i.client != name);
        Ok(c)
    }

    pub fn client_by_fingerprint(&self, fingerprint: &str) -> Option<&Client> {
        self.clients.values().find(|c| c.fingerprint.eq_ignore_ascii_case(fingerprint))
    }

    pub fn add_group(&mut self, name: &str) -> Result<(), AccessError> {
        check_name(name)?;
        if self.groups.contains_key(name) {
            return Err(AccessError::GroupExists(name.to_string()));
        }
        self.groups.insert(name.to_string(), Group::default());
        Ok(())
    }

    pub fn group_mut(&mut self, name: &str) -> Result<&mut Group, AccessError> {
        self.groups.get_mut(name).ok_or_else(|| AccessError::NoGroup(name.to_string()))
    }

    pub fn join(&mut self, group: &str, client: &str) -> Result<(), AccessError> {
        if !self.clients.contains_key(client) {
            return Err(AccessError::NoClient(client.to_string()));
        }
        self.group_mut(group)?.clients.insert(client.to_string());
        Ok(())
    }

    pub fn grant(&mut self, group: &str, volume: &str, grant: Grant) -> Result<(), AccessError> {
        for r in &grant.regions {
            if r.length == 0 || r.offset.checked_add(r.length).is_none() {
                return Err(AccessError::BadRegion { offset: r.offset, length: r.length });
            }
        }
        self.group_mut(group)?.grants.insert(volume.to_string(), grant);
        Ok(())
    }

    /// Groups that can reach a volume.
    pub fn groups_of_volume(&self, volume: &str) -> Vec<String> {
        self.groups.iter().filter(|(_, g)| g.grants.contains_key(volume)).map(|(n, _)| n.clone()).collect()
    }

    /// Forgets a deleted volume.
    pub fn forget_volume(&mut self, volume: &str) {
        for g in self.groups.values_mut() {
            g.grants.remove(volume);
        }
    }

    /// The union of every grant on `volume` of every group the identity belongs to.
    pub fn rights(&self, who: &Identity, volume: &str) -> Rights {
        let mut rights = Rights { read: Ranges::none(), write: Ranges::none() };
        for (name, g) in &self.groups {
            let member = match who {
                Identity::Client(c) => g.clients.contains(c),
                Identity::Local => name == LOCAL_GROUP,
            };
            if let (true, Some(grant)) = (member, g.grants.get(volume)) {
                rights.add(grant);
            }
        }
        rights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        let mut r = Registry::default();
        for c in ["a", "b", "c"] {
            r.add_client(Client { name: c.into(), fingerprint: format!("FP-{c}"), created_unix_ms: 0, chap: None })
                .unwrap();
        }
        r.add_group("rw").unwrap();
        r.add_group("ro").unwrap();
        r.add_group("part").unwrap();
        r.join("rw", "a").unwrap();
        r.join("ro", "b").unwrap();
        r.join("part", "c").unwrap();
        r.grant("rw", "v", Grant { mode: Mode::ReadWrite, regions: vec![] }).unwrap();
        r.grant("ro", "v", Grant { mode: Mode::ReadOnly, regions: vec![] }).unwrap();
        let regions = vec![Region { offset: 1 << 20, length: 1 << 20 }];
        r.grant("part", "v", Grant { mode: Mode::ReadWrite, regions }).unwrap();
        r
    }

    #[test]
    fn modes_and_regions() {
        let r = reg();
        assert_eq!(r.rights(&Identity::Client("a".into()), "v"), Rights::full());
        let ro = r.rights(&Identity::Client("b".into()), "v");
        assert!(ro.read_only() && ro.read.covers(0, 4096));
        let part = r.rights(&Identity::Client("c".into()), "v");
        assert!(part.write.covers(1 << 20, 4096));
        assert!(part.write.covers((2 << 20) - 4096, 4096));
        assert!(!part.write.covers((2 << 20) - 4096, 8192), "straddles the end");
        assert!(!part.read.covers(0, 512));
        assert!(!part.read.covers(u64::MAX - 1, 4), "overflow is refused, not wrapped");
        assert!(r.rights(&Identity::Client("a".into()), "other").is_none());
        assert!(r.rights(&Identity::Local, "v").is_none(), "admin group has no grant here");
        assert!(r.rights(&Identity::Client("nobody".into()), "v").is_none());
    }

    #[test]
    fn union_of_groups_merges_regions() {
        let mut r = reg();
        r.join("ro", "c").unwrap();
        let rights = r.rights(&Identity::Client("c".into()), "v");
        assert_eq!(rights.read, Ranges::All, "read-only everywhere from the ro group");
        assert!(!rights.write.covers(0, 1), "but writes only inside the region");
        r.add_group("more").unwrap();
        r.join("more", "c").unwrap();
        let regions = vec![Region { offset: 2 << 20, length: 4096 }, Region { offset: 0, length: 10 }];
        r.grant("more", "v", Grant { mode: Mode::ReadWrite, regions }).unwrap();
        let rights = r.rights(&Identity::Client("c".into()), "v");
        assert!(rights.write.covers((2 << 20) - 100, 200), "adjacent regions merge");
        assert_eq!(
            rights.write,
            Ranges::Some(vec![Region { offset: 0, length: 10 }, Region { offset: 1 << 20, length: (1 << 20) + 4096 }])
        );
    }

    #[test]
    fn removing_a_client_drops_its_rights() {
        let mut r = reg();
        assert_eq!(r.client_by_fingerprint("fp-a").map(|c| c.name.as_str()), Some("a"));
        r.remove_client("a").unwrap();
        assert!(r.client_by_fingerprint("FP-a").is_none());
        assert!(r.rights(&Identity::Client("a".into()), "v").is_none());
        assert_eq!(r.remove_client("a"), Err(AccessError::NoClient("a".into())));
    }

    #[test]
    fn bad_input_is_refused() {
        let mut r = reg();
        assert!(matches!(r.add_group("../x"), Err(AccessError::BadName(_))));
        assert!(matches!(r.add_group(""), Err(AccessError::BadName(_))));
        assert!(matches!(r.add_group("rw"), Err(AccessError::GroupExists(_))));
        assert!(matches!(r.join("rw", "ghost"), Err(AccessError::NoClient(_))));
        let bad = Grant { mode: Mode::ReadOnly, regions: vec![Region { offset: u64::MAX, length: 2 }] };
        assert!(matches!(r.grant("rw", "v", bad), Err(AccessError::BadRegion { .. })));
        let empty = Grant { mode: Mode::ReadOnly, regions: vec![Region { offset: 0, length: 0 }] };
        assert!(matches!(r.grant("rw", "v", empty), Err(AccessError::BadRegion { .. })));
        assert!(matches!(
            r.grant("ghost", "v", Grant { mode: Mode::ReadOnly, regions: vec![] }),
            Err(AccessError::NoGroup(_))
        ));
    }

    #[test]
    fn local_identity_is_the_admin_group() {
        let mut r = reg();
        r.add_group(LOCAL_GROUP).unwrap();
        r.grant(LOCAL_GROUP, "demo", Grant { mode: Mode::ReadWrite, regions: vec![] }).unwrap();
        assert_eq!(r.rights(&Identity::Local, "demo"), Rights::full());
        assert_eq!(r.groups_of_volume("v"), vec!["part", "ro", "rw"]);
        r.forget_volume("v");
        assert!(r.groups_of_volume("v").is_empty());
    }
}
