//! Persistent reservations in the configuration database, one key per volume. Every gateway
//! of an appliance shares them: a change is stored only over the version it was made on
//! (otherwise the iSCSI layer makes it again on the newer state), and each gateway follows the
//! key's changes into its sessions ([`follow`]).

use std::sync::Arc;

use cleave_control::config::{ConfigError, ConfigStore, PutMode, Version};
use cleave_iscsi::{ReservationType, Reservations, ReservationsAt, Saved};
use serde::{Deserialize, Serialize};
use tracing::warn;

const PREFIX: &str = "iscsi-reservations/";

/// The configuration database key of a volume's persistent reservations.
pub(super) fn key(volume: &str) -> String {
    format!("{PREFIX}{volume}")
}

/// Reservations as stored: the nexus names, keys and the type's SPC-4 code.
#[derive(Serialize, Deserialize, Default)]
struct StoredForm {
    generation: u32,
    registrations: Vec<(String, u64)>,
    reservation: Option<(String, u8)>,
}

impl StoredForm {
    fn of(state: &Reservations) -> Self {
        StoredForm {
            generation: state.generation,
            registrations: state.registrations.clone(),
            reservation: state.reservation.as_ref().map(|(h, t)| (h.clone(), t.code())),
        }
    }

    /// None when the type's code is not one of SPC-4's.
    fn restore(self) -> Option<Reservations> {
        let reservation = match self.reservation {
            Some((holder, code)) => Some((holder, ReservationType::from_code(code)?)),
            None => None,
        };
        Some(Reservations { generation: self.generation, registrations: self.registrations, reservation })
    }
}

/// Stored bytes as reservations; unreadable ones count as none (and are written over).
fn parse(volume: &str, raw: &[u8]) -> Reservations {
    let parsed = serde_json::from_slice::<StoredForm>(raw).ok().and_then(StoredForm::restore);
    parsed.unwrap_or_else(|| {
        warn!(volume, "the volume's stored iSCSI reservations are unreadable: starting without");
        Reservations::default()
    })
}

/// What is stored for `volume`, at its version.
pub(super) fn load(store: &dyn ConfigStore, volume: &str) -> Result<ReservationsAt, ConfigError> {
    Ok(match store.get(&key(volume))? {
        Some(e) => ReservationsAt { state: parse(volume, &e.value), version: e.version.0 },
        None => ReservationsAt::default(),
    })
}

/// Stores `next` only over `read`'s version.
pub(super) fn save(store: &dyn ConfigStore, volume: &str, read: &ReservationsAt, next: &Reservations) -> Saved {
    let mode = if read.version == 0 { PutMode::Create } else { PutMode::Update(Version(read.version)) };
    let bytes = match serde_json::to_vec(&StoredForm::of(next)) {
        Ok(b) => b,
        Err(e) => {
            warn!(volume, error = %e, "could not encode the volume's iSCSI reservations");
            return Saved::Failed;
        }
    };
    let failed = |e: ConfigError| {
        warn!(volume, error = %e, "could not store the volume's iSCSI reservations");
        Saved::Failed
    };
    match store.put_opts(&key(volume), &bytes, mode) {
        Ok(version) => Saved::Stored(version.0),
        Err(e) if e.is_conflict() => load(store, volume).map_or_else(failed, Saved::Changed),
        Err(e) => failed(e),
    }
}

/// Hands every volume's reservations to `changed` as stored now, then each change any
/// gateway stores (`crate::stored::follow_prefix`). Older versions than one already handed
/// over are dropped downstream.
pub async fn follow(store: Arc<dyn ConfigStore>, changed: impl Fn(&str, ReservationsAt) + Send + Sync + 'static) {
    crate::stored::follow_prefix(store, PREFIX, |key, value, version| {
        let Some(volume) = key.strip_prefix(PREFIX) else { return };
        let state = value.map(|v| parse(volume, v)).unwrap_or_default();
        changed(volume, ReservationsAt { state, version: version.0 });
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_control::config::RedbStore;

    #[test]
    fn reservations_round_trip_through_their_stored_form() {
        let nexus = "iqn.x:1,i,0x23d000000001".to_string();
        let r = Reservations {
            generation: 7,
            registrations: vec![(nexus.clone(), 0xabc), ("iqn.x:2,i,0x1".into(), 5)],
            reservation: Some((nexus, ReservationType::WriteExclusiveRegistrantsOnly)),
        };
        let json = serde_json::to_vec(&StoredForm::of(&r)).unwrap();
        let back = serde_json::from_slice::<StoredForm>(&json).unwrap().restore();
        assert_eq!(back, Some(r));
        let bad = StoredForm { reservation: Some(("n".into(), 2)), ..Default::default() };
        assert_eq!(bad.restore(), None, "type code 2 is obsolete in SPC-4");
    }

    /// A save over a version another gateway has moved past stores nothing and returns theirs.
    #[test]
    fn a_save_over_an_old_version_returns_the_newer_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("config.redb")).unwrap();
        let empty = load(&store, "v").unwrap();
        assert_eq!(empty, ReservationsAt::default());
        let mine = Reservations { registrations: vec![("a".into(), 1)], ..Default::default() };
        let Saved::Stored(version) = save(&store, "v", &empty, &mine) else { panic!("first save") };
        let theirs = Reservations { registrations: vec![("b".into(), 2)], ..Default::default() };
        assert_eq!(save(&store, "v", &empty, &theirs), Saved::Changed(ReservationsAt { state: mine.clone(), version }));
        assert_eq!(load(&store, "v").unwrap().state, mine, "nothing was written over");
    }
}
