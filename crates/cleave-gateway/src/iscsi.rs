//! The gateway as the iSCSI front end sees it ([`cleave_iscsi::Access`]): an initiator logs in
//! as a client (its name in the registry, proved with the client's CHAP secret unless an
//! administrator allowed it without), sees the volumes the client's groups reach, and uses
//! them through the same [`Guarded`] device as NBD, so rights and regions are the same.
//! Persistent reservations are kept in the configuration database.

use cleave_control::access::{Chap, Identity, Secret};
use cleave_iscsi::{Alua, AluaState, Opened, PortGroup, Reservations, ReservationsAt, Rights, Saved};
use cleave_mirror::HostView;
use cleave_nbd::ExportProvider;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::access::Guarded;
use crate::error::Result;
use crate::gateway::Gateway;

mod reservations;

/// The name the gateway answers a mutual CHAP challenge with.
pub const TARGET_CHAP_NAME: &str = "cleave";

/// A client's new CHAP secrets, shown once.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChapSecrets {
    /// The CHAP name its initiators log in with: the client's name.
    pub chap_name: String,
    pub secret: String,
    /// For mutual CHAP: the name and secret the gateway answers with.
    pub target_name: Option<String>,
    pub target_secret: Option<String>,
}

impl std::fmt::Debug for ChapSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecrets").field("chap_name", &self.chap_name).finish_non_exhaustive()
    }
}

/// A new CHAP secret: 16 characters (the most some initiators take) of 64 kinds, 96 bits, as
/// RFC 7143 asks of secrets used without IPsec.
fn chap_secret() -> anyhow::Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut raw = [0u8; 12];
    cleave_split::keys::fill_random(&mut raw)?;
    let bits = raw.iter().fold(0u128, |acc, &b| (acc << 8) | b as u128);
    Ok((0..16).map(|i| ALPHABET[((bits >> (6 * i)) & 63) as usize] as char).collect())
}

/// Whether a volume's name is a valid part of an iSCSI name (lowercase, digits, '-', '.');
/// other volumes are not exported over iSCSI.
pub fn exportable(volume: &str) -> bool {
    volume.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

/// ALUA for a mirrored volume: the side that created the mirror is target port group 1 (port 1),
/// the other group 2, on both gateways; the primary's group is active/optimized and the
/// secondary's standby. The generation follows this side's state, so a promotion or a
/// hand-over raises ASYMMETRIC ACCESS STATE CHANGED on this side's sessions.
fn mirror_alua(view: HostView) -> Alua {
    let local: u16 = if view.origin { 1 } else { 2 };
    let state = |group: u16| {
        if (group == local) == view.serving {
            AluaState::ActiveOptimized
        } else {
            AluaState::Standby
        }
    };
    Alua {
        local_group: local,
        local_port: local,
        groups: [1, 2].map(|id| PortGroup { id, state: state(id), ports: vec![id] }).to_vec(),
        generation: if view.serving { 1 } else { 2 },
    }
}

/// A gateway's target port group (and relative port) in an appliance, the same on every
/// gateway: from a hash of its name, never 0.
fn group_of(gateway: &str) -> u16 {
    let h = blake3::hash(gateway.as_bytes());
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]).max(1)
}

/// ALUA in an appliance: one target port group per gateway; the primary's active/optimized,
/// every other active/non-optimized (it forwards to the primary), except this gateway's own
/// when it cannot reach a primary that is alive (`cut_off`: no heartbeat answered for longer
/// than a failover takes), which is unavailable, so hosts use another path rather than wait
/// on this one. The generation follows the
/// primary and the cut, so a failover, a switchover or a cut raises ASYMMETRIC ACCESS STATE
/// CHANGED on every gateway's sessions. With no primary known, every group is non-optimized:
/// requests wait for the next primary.
fn appliance_alua(me: &str, primary: Option<&str>, members: &[String], cut_off: bool) -> Alua {
    let mut gateways: Vec<&str> = members.iter().map(String::as_str).chain([me]).chain(primary).collect();
    gateways.sort_unstable();
    gateways.dedup();
    let state = |g: &str| match g {
        g if Some(g) == primary => AluaState::ActiveOptimized,
        g if g == me && cut_off => AluaState::Unavailable,
        _ => AluaState::ActiveNonOptimized,
    };
    let groups = gateways.iter().map(|g| PortGroup { id: group_of(g), state: state(g), ports: vec![group_of(g)] });
    let mut h = blake3::Hasher::new();
    h.update(primary.unwrap_or_default().as_bytes()).update(&[u8::from(cut_off)]);
    Alua {
        local_group: group_of(me),
        local_port: group_of(me),
        groups: groups.collect(),
        generation: u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")),
    }
}

impl Gateway {
    /// Makes new CHAP secrets for a client (and one for the gateway to prove back with, when
    /// `mutual`). The old ones stop working at the next login.
    pub fn set_chap(&self, client: &str, mutual: bool) -> Result<ChapSecrets> {
        let secret = chap_secret()?;
        let target = if mutual { Some(chap_secret()?) } else { None };
        let chap = Chap { secret: Secret(secret.clone()), mutual: target.clone().map(Secret) };
        self.access.update(|r| Ok(r.set_chap(client, chap.clone())?))?;
        info!(client, mutual, "CHAP secrets made");
        Ok(ChapSecrets {
            chap_name: client.to_string(),
            secret,
            target_name: target.as_ref().map(|_| TARGET_CHAP_NAME.to_string()),
            target_secret: target,
        })
    }

    /// Lets an iSCSI initiator log in as a client: with the client's CHAP secret, or, when
    /// `chap` is false, on its name alone.
    pub fn allow_initiator(&self, client: &str, initiator: &str, chap: bool) -> Result<()> {
        let name = self.access.update(|r| Ok(r.allow_initiator(client, initiator, chap)?))?;
        if chap {
            info!(client, initiator = %name, "iSCSI initiator allowed (CHAP)");
        } else {
            warn!(client, initiator = %name, "iSCSI initiator allowed WITHOUT CHAP: its name alone identifies it");
        }
        Ok(())
    }

    pub fn remove_initiator(&self, client: &str, initiator: &str) -> Result<()> {
        self.access.update(|r| Ok(r.remove_initiator(client, initiator)?))?;
        info!(client, initiator, "iSCSI initiator removed");
        Ok(())
    }

    /// The client an iSCSI login is, if any.
    fn iscsi_identity(&self, who: &cleave_iscsi::Identity) -> Option<Identity> {
        self.access.with_registry(|r| {
            r.iscsi_client(&who.initiator, who.chap_name.as_deref()).map(|c| Identity::Client(c.to_string()))
        })
    }

    /// Keeps `server`'s sessions applying the reservations other gateways store, for as long
    /// as it runs.
    pub fn follow_reservations(&self, server: &std::sync::Arc<cleave_iscsi::Server>) {
        let server = std::sync::Arc::downgrade(server);
        let follow = reservations::follow(self.data.config.clone(), move |volume, stored| {
            if let Some(server) = server.upgrade() {
                server.reservations_changed(volume, stored);
            }
        });
        tokio::spawn(follow);
    }

    /// Forgets a deleted volume's reservations.
    pub(crate) fn forget_reservations(&self, volume: &str) {
        if let Err(e) = self.data.config.delete(&reservations::key(volume)) {
            warn!(volume, error = %e, "could not remove the volume's iSCSI reservations");
        }
    }
}

impl cleave_iscsi::Access for Gateway {
    fn volumes(&self, who: &cleave_iscsi::Identity) -> Vec<String> {
        let Some(id) = self.iscsi_identity(who) else { return Vec::new() };
        let mut list: Vec<String> = ExportProvider::list(self)
            .into_iter()
            .filter(|v| exportable(v) && !self.access.rights(&id, v).is_none())
            .collect();
        list.sort();
        list
    }

    fn chap_required(&self, initiator: &str) -> bool {
        self.access.with_registry(|r| r.chap_required(initiator))
    }

    fn chap_secret(&self, initiator: &str, chap_name: &str) -> Option<Vec<u8>> {
        self.access.with_registry(|r| Some(r.chap_of(initiator, chap_name)?.secret.0.clone().into_bytes()))
    }

    fn target_secret(&self, initiator: &str) -> Option<(String, Vec<u8>)> {
        let mutual = self.access.with_registry(|r| r.chap_of_client(initiator)?.mutual.clone())?;
        Some((TARGET_CHAP_NAME.to_string(), mutual.0.into_bytes()))
    }

    fn open(&self, volume: &str, who: &cleave_iscsi::Identity) -> Option<Opened> {
        let id = self.iscsi_identity(who)?;
        if !exportable(volume) || self.access.rights(&id, volume).is_none() {
            return None;
        }
        // Served here, or forwarded to its primary.
        let serial = self.config_of(volume, |c| c.uuid.clone())?;
        let device = ExportProvider::open(self, volume)?;
        // The grant decides; a mirror's secondary is read-only only until it is promoted,
        // which ALUA reports (standby), and the device refuses writes meanwhile.
        let rights = if self.access.rights(&id, volume).read_only() { Rights::ReadOnly } else { Rights::ReadWrite };
        let guarded = Guarded::new(device, self.access.clone(), id, volume.to_string());
        Some(Opened { device: std::sync::Arc::new(guarded), rights, serial })
    }

    fn alua(&self, volume: &str) -> Alua {
        if let Some(view) = self.mirror.get().and_then(|m| m.host_view(volume)) {
            return mirror_alua(view);
        }
        let Some(a) = &self.appliance else { return Alua::default() };
        // What this gateway knows now, never asked of etcd: this runs for every command.
        let primary = if self.get(volume).is_some() {
            Some(a.me().to_string())
        } else {
            self.unopened.read().expect("not poisoned").get(volume).and_then(|u| u.primary.clone())
        };
        let primary = primary.as_deref().filter(|p| !p.is_empty());
        let cut_off = primary.is_some_and(|p| p != a.me() && self.peers.cut_off(p, a.ttl()));
        appliance_alua(a.me(), primary, &a.known_members(), cut_off)
    }

    fn reservations(&self, volume: &str) -> Option<ReservationsAt> {
        reservations::load(self.data.config.as_ref(), volume)
            .inspect_err(|e| warn!(volume, error = %e, "could not read the volume's iSCSI reservations"))
            .ok()
    }

    fn save_reservations(&self, volume: &str, read: &ReservationsAt, next: &Reservations) -> Saved {
        reservations::save(self.data.config.as_ref(), volume, read, next)
    }
}

#[cfg(test)]
mod tests {
    use super::{appliance_alua, chap_secret, exportable, group_of, mirror_alua};
    use cleave_iscsi::AluaState;
    use cleave_mirror::HostView;

    #[test]
    fn a_mirror_pair_is_two_port_groups_and_the_primary_is_optimized() {
        let states = |origin, serving| {
            let a = mirror_alua(HostView { origin, serving });
            (a.local_group, a.groups.iter().map(|g| (g.id, g.state)).collect::<Vec<_>>(), a.generation)
        };
        let (o, s) = (AluaState::ActiveOptimized, AluaState::Standby);
        assert_eq!(states(true, true), (1, vec![(1, o), (2, s)], 1), "the creator, primary");
        assert_eq!(states(false, false), (2, vec![(1, o), (2, s)], 2), "its mirror agrees");
        assert_eq!(states(false, true), (2, vec![(1, s), (2, o)], 1), "the mirror, promoted");
        assert_eq!(states(true, false), (1, vec![(1, s), (2, o)], 2), "the creator, handed over");
    }

    #[test]
    fn in_an_appliance_each_gateway_is_a_port_group_and_the_primary_is_optimized() {
        let members = ["gateway-a".to_string(), "gateway-b".into(), "gateway-c".into()];
        let states = |me: &str, primary: Option<&str>| {
            let a = appliance_alua(me, primary, &members, false);
            let optimized: Vec<u16> =
                a.groups.iter().filter(|g| g.state == AluaState::ActiveOptimized).map(|g| g.id).collect();
            assert_eq!(a.groups.len(), 3, "{a:?}");
            assert!(a.groups.iter().all(|g| g.ports == vec![g.id]));
            (a.local_group, optimized, a.generation)
        };
        let (a, b, c) = (group_of("gateway-a"), group_of("gateway-b"), group_of("gateway-c"));
        assert!(a != b && b != c && a != c && a != 0);
        // Every gateway tells the same story: a's group is optimized.
        let (on_a, on_b, on_c) = (
            states("gateway-a", Some("gateway-a")),
            states("gateway-b", Some("gateway-a")),
            states("gateway-c", Some("gateway-a")),
        );
        assert_eq!((on_a.0, on_b.0, on_c.0), (a, b, c));
        assert!([&on_a, &on_b, &on_c].iter().all(|s| s.1 == vec![a] && s.2 == on_a.2));
        // b takes over: the generation changes (the unit attention), b's group is optimized.
        let after = states("gateway-c", Some("gateway-b"));
        assert_eq!(after.1, vec![b]);
        assert_ne!(after.2, on_c.2);
        // No primary known: nothing optimized, every path non-optimized (requests wait).
        let waiting = appliance_alua("gateway-c", None, &members, false);
        assert!(waiting.groups.iter().all(|g| g.state == AluaState::ActiveNonOptimized));
        // c cannot reach the primary: its own path is unavailable, and the change is told.
        let cut = appliance_alua("gateway-c", Some("gateway-b"), &members, true);
        let state_of = |id| cut.groups.iter().find(|g| g.id == id).map(|g| g.state);
        assert_eq!(state_of(c), Some(AluaState::Unavailable));
        assert_eq!((state_of(b), state_of(a)), (Some(AluaState::ActiveOptimized), Some(AluaState::ActiveNonOptimized)));
        assert_ne!(cut.generation, after.2);
    }

    #[test]
    fn chap_secrets_are_16_url_safe_characters_and_differ() {
        let (a, b) = (chap_secret().unwrap(), chap_secret().unwrap());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn only_iscsi_safe_names_are_exported() {
        assert!(exportable("vol-1.a"));
        assert!(!exportable("Vol") && !exportable("v_1"));
    }
}
