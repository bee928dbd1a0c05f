//! Persistent reservations (SPC-4 §5.13): PERSISTENT RESERVE IN and OUT, and the check that
//! refuses other I_T nexuses' access. The host keeps the state across restarts, and shares it
//! with the other gateways of an appliance, through [`crate::Access::save_reservations`]: a
//! change is in force once stored, and one that met another gateway's newer change is made
//! again on that.

use bytes::Bytes;

use super::{Cdb, Lu, Outcome, Result, Sense, Status};
use crate::access::{ReservationsAt, Saved};

/// Tries of a change that keeps meeting other gateways' newer ones.
const TRIES: usize = 20;

/// Reservation types (SPC-4 Table 217).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl ReservationType {
    pub fn code(self) -> u8 {
        match self {
            ReservationType::WriteExclusive => 1,
            ReservationType::ExclusiveAccess => 3,
            ReservationType::WriteExclusiveRegistrantsOnly => 5,
            ReservationType::ExclusiveAccessRegistrantsOnly => 6,
            ReservationType::WriteExclusiveAllRegistrants => 7,
            ReservationType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    pub fn from_code(c: u8) -> Option<ReservationType> {
        [1, 3, 5, 6, 7, 8].iter().position(|&x| x == c).map(|i| {
            [
                ReservationType::WriteExclusive,
                ReservationType::ExclusiveAccess,
                ReservationType::WriteExclusiveRegistrantsOnly,
                ReservationType::ExclusiveAccessRegistrantsOnly,
                ReservationType::WriteExclusiveAllRegistrants,
                ReservationType::ExclusiveAccessAllRegistrants,
            ][i]
        })
    }

    fn all_registrants(self) -> bool {
        matches!(self, ReservationType::WriteExclusiveAllRegistrants | ReservationType::ExclusiveAccessAllRegistrants)
    }

    /// Registrants that do not hold the reservation may still access.
    fn registrants_allowed(self) -> bool {
        !matches!(self, ReservationType::WriteExclusive | ReservationType::ExclusiveAccess)
    }

    fn exclusive_access(self) -> bool {
        matches!(
            self,
            ReservationType::ExclusiveAccess
                | ReservationType::ExclusiveAccessRegistrantsOnly
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }
}

/// Registrations and the reservation of one volume, as the host stores them. An I_T nexus is
/// named by its initiator port: `<initiator name>,i,0x<ISID>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservations {
    pub generation: u32,
    /// (nexus, key), in registration order.
    pub registrations: Vec<(String, u64)>,
    /// (holder nexus, type). For the all-registrants types every registrant holds it.
    pub reservation: Option<(String, ReservationType)>,
}

impl Reservations {
    fn key_of(&self, nexus: &str) -> Option<u64> {
        self.registrations.iter().find(|(n, _)| n == nexus).map(|&(_, k)| k)
    }

    fn holds(&self, nexus: &str) -> bool {
        match &self.reservation {
            Some((_, t)) if t.all_registrants() => self.key_of(nexus).is_some(),
            Some((h, _)) => h == nexus,
            None => false,
        }
    }

    /// Whether a command from `nexus` conflicts: `write` for commands that change the medium.
    pub fn conflicts(&self, nexus: &str, write: bool) -> bool {
        let Some((_, t)) = &self.reservation else { return false };
        if self.holds(nexus) || (t.registrants_allowed() && self.key_of(nexus).is_some()) {
            return false;
        }
        write || t.exclusive_access()
    }

    fn unregister(&mut self, nexus: &str) {
        self.registrations.retain(|(n, _)| n != nexus);
        let gone = match &self.reservation {
            Some((_, t)) if t.all_registrants() => self.registrations.is_empty(),
            Some((h, _)) => h == nexus,
            None => false,
        };
        if gone {
            self.reservation = None;
        }
    }
}

const CONFLICT: Outcome = Outcome { status: Status::ReservationConflict, data: Bytes::new(), sense: None };

impl Lu {
    /// The nexus's key, or a conflict: PERSISTENT RESERVE OUT needs a registered, matching key.
    fn registered(r: &Reservations, nexus: &str, key: u64) -> std::result::Result<(), Outcome> {
        match r.key_of(nexus) {
            Some(k) if k == key => Ok(()),
            _ => Err(CONFLICT),
        }
    }

    pub(super) fn persistent_reserve_in(&self, cdb: &Cdb<'_>) -> Result<Outcome> {
        let r = self.shared.reservations.lock().unwrap_or_else(|e| e.into_inner()).state.clone();
        let mut v = r.generation.to_be_bytes().to_vec();
        match cdb.byte(1) & 0x1f {
            0 => {
                v.extend_from_slice(&(r.registrations.len() as u32 * 8).to_be_bytes());
                r.registrations.iter().for_each(|(_, k)| v.extend_from_slice(&k.to_be_bytes()));
            }
            1 => match &r.reservation {
                Some((holder, t)) => {
                    v.extend_from_slice(&16u32.to_be_bytes());
                    let key = if t.all_registrants() { 0 } else { r.key_of(holder).unwrap_or(0) };
                    v.extend_from_slice(&key.to_be_bytes());
                    v.extend_from_slice(&[0, 0, 0, 0, 0, t.code(), 0, 0]);
                }
                None => v.extend_from_slice(&0u32.to_be_bytes()),
            },
            3 => {
                let full = read_full_status(&r, self.alua().local_port);
                v.extend_from_slice(&(full.len() as u32).to_be_bytes());
                v.extend(full);
            }
            // REPORT CAPABILITIES: TMV, every type; no SPEC_I_PT, ALL_TG_PT or APTPL.
            2 => v = vec![0, 8, 0, 0x80, 0xea, 0x01, 0, 0],
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)),
        }
        Ok(Outcome::good(super::truncate(v, cdb.be(7, 2))))
    }

    pub(super) fn persistent_reserve_out(&self, nexus: &str, cdb: &Cdb<'_>, data: &[u8]) -> Result<Outcome> {
        let sa = cdb.byte(1) & 0x1f;
        if cdb.be(5, 4) != 24 || data.len() < 24 {
            return Err(Sense::PARAMETER_LIST_LENGTH);
        }
        let p = Cdb(data);
        let (key, sa_key) = (p.be(0, 8), p.be(8, 8));
        // SPEC_I_PT and ALL_TG_PT are not supported; APTPL is accepted (state always persists).
        if p.byte(20) & 0x0c != 0 {
            return Err(Sense::INVALID_FIELD_IN_PARAMETERS);
        }
        let kind = ReservationType::from_code(cdb.byte(2) & 0x0f);
        let change = |r: &mut Reservations| -> Result<Step> {
            Ok(match sa {
                0 | 6 => register(r, nexus, key, sa_key, sa == 6),
                1 => Self::registered(r, nexus, key).and_then(|()| reserve(r, nexus, kind)),
                2 => Self::registered(r, nexus, key).and_then(|()| release(r, nexus, kind)),
                3 => Self::registered(r, nexus, key).map(|()| {
                    r.registrations.clear();
                    r.reservation = None;
                    r.generation = r.generation.wrapping_add(1);
                    Outcome::good(Bytes::new())
                }),
                4 | 5 => Self::registered(r, nexus, key).and_then(|()| preempt(r, nexus, sa_key, kind)),
                _ => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)),
            })
        };
        self.change_reservations(nexus, change)
    }

    /// Applies `change` to the reservations held and stores the result; when another gateway
    /// stored newer ones first, applies it to those instead.
    fn change_reservations(
        &self,
        nexus: &str,
        mut change: impl FnMut(&mut Reservations) -> Result<Step>,
    ) -> Result<Outcome> {
        let mut held = self.shared.reservations.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..TRIES {
            let mut next = held.state.clone();
            let outcome = change(&mut next)?;
            if next == held.state {
                return Ok(outcome.unwrap_or_else(|o| o));
            }
            match self.access.save_reservations(&self.names.volume, &held, &next) {
                Saved::Stored(version) => {
                    self.shared.owe(owed(&held.state, &next, Some(nexus)));
                    *held = ReservationsAt { state: next, version };
                    return Ok(outcome.unwrap_or_else(|o| o));
                }
                Saved::Changed(newer) => self.shared.take_newer(&mut held, newer),
                Saved::Failed => break,
            }
        }
        Err(Sense::INTERNAL_TARGET_FAILURE)
    }

    /// RESERVATION CONFLICT for media access from a nexus the reservation excludes.
    pub(super) fn reservation_conflict(&self, nexus: &str, op: u8) -> bool {
        let write = super::io::is_write(op) || matches!(op, 0x15 | 0x55);
        let media = write || super::io::is_media_access(op);
        media && self.shared.reservations.lock().unwrap_or_else(|e| e.into_inner()).state.conflicts(nexus, write)
    }
}

/// The unit attentions a change of the reservations owes the registrants other than `actor`
/// (SPC-4 §5.13.11, §5.13.12): a registration removed is REGISTRATIONS PREEMPTED, or
/// RESERVATIONS PREEMPTED when nothing is left (CLEAR); a registrants-only or all-registrants
/// reservation gone while the registration stays is RESERVATIONS RELEASED.
pub(super) fn owed(before: &Reservations, after: &Reservations, actor: Option<&str>) -> Vec<(String, Sense)> {
    let released =
        before.reservation.as_ref().is_some_and(|(_, t)| t.registrants_allowed()) && after.reservation.is_none();
    let cleared = after.registrations.is_empty() && after.reservation.is_none();
    let others = before.registrations.iter().filter(|(port, _)| Some(port.as_str()) != actor);
    others
        .filter_map(|(port, _)| {
            let sense = match after.key_of(port) {
                None if cleared => Sense::RESERVATIONS_PREEMPTED,
                None => Sense::REGISTRATIONS_PREEMPTED,
                Some(_) if released => Sense::RESERVATIONS_RELEASED,
                Some(_) => return None,
            };
            Some((port.clone(), sense))
        })
        .collect()
}

/// READ FULL STATUS descriptors: one per registration, with its iSCSI TransportID.
fn read_full_status(r: &Reservations, port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (nexus, key) in &r.registrations {
        let mut d = key.to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        let kind = r.reservation.as_ref().filter(|_| r.holds(nexus)).map(|(_, t)| t.code());
        d.push(u8::from(kind.is_some()));
        d.push(kind.unwrap_or(0));
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&port.to_be_bytes());
        // TransportID format 1 (initiator port name), protocol iSCSI.
        let mut name = nexus.as_bytes().to_vec();
        name.push(0);
        name.resize(name.len().next_multiple_of(4).max(20), 0);
        let mut id = vec![0x45, 0];
        id.extend_from_slice(&(name.len() as u16).to_be_bytes());
        id.extend(name);
        d.extend_from_slice(&(id.len() as u32).to_be_bytes());
        d.extend(id);
        out.extend(d);
    }
    out
}

type Step = std::result::Result<Outcome, Outcome>;

fn register(r: &mut Reservations, nexus: &str, key: u64, sa_key: u64, ignore: bool) -> Step {
    match r.key_of(nexus) {
        None if key != 0 && !ignore => return Err(CONFLICT),
        None if sa_key == 0 => return Ok(Outcome::good(Bytes::new())),
        None => r.registrations.push((nexus.to_owned(), sa_key)),
        Some(k) if k != key && !ignore => return Err(CONFLICT),
        Some(_) if sa_key == 0 => r.unregister(nexus),
        Some(_) => r.registrations.iter_mut().filter(|(n, _)| n == nexus).for_each(|e| e.1 = sa_key),
    }
    r.generation = r.generation.wrapping_add(1);
    Ok(Outcome::good(Bytes::new()))
}

fn reserve(r: &mut Reservations, nexus: &str, kind: Option<ReservationType>) -> Step {
    let kind = kind.ok_or(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)))?;
    match &r.reservation {
        None => r.reservation = Some((nexus.to_owned(), kind)),
        Some((_, t)) if r.holds(nexus) && *t == kind => {}
        Some(_) => return Err(CONFLICT),
    }
    Ok(Outcome::good(Bytes::new()))
}

fn release(r: &mut Reservations, nexus: &str, kind: Option<ReservationType>) -> Step {
    match &r.reservation {
        Some((_, t)) if r.holds(nexus) => {
            if Some(*t) != kind {
                // INVALID RELEASE OF PERSISTENT RESERVATION.
                return Err(Outcome::check(Sense::new(super::Key::IllegalRequest, 0x26, 0x04)));
            }
            r.reservation = None;
        }
        _ => {}
    }
    Ok(Outcome::good(Bytes::new()))
}

fn preempt(r: &mut Reservations, nexus: &str, sa_key: u64, kind: Option<ReservationType>) -> Step {
    let holder_key = match &r.reservation {
        Some((_, t)) if t.all_registrants() => Some(0),
        Some((h, _)) => r.key_of(h),
        None => None,
    };
    if holder_key == Some(sa_key) {
        let kind = kind.ok_or(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)))?;
        // All-registrants reservations with key 0: every other registration goes.
        r.registrations.retain(|(n, k)| n == nexus || (*k != sa_key && sa_key != 0));
        r.reservation = Some((nexus.to_owned(), kind));
    } else {
        if sa_key == 0 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_PARAMETERS));
        }
        let before = r.registrations.len();
        r.registrations.retain(|(n, k)| n == nexus || *k != sa_key);
        if r.registrations.len() == before {
            return Err(CONFLICT);
        }
    }
    r.generation = r.generation.wrapping_add(1);
    Ok(Outcome::good(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_reserve_conflict_release() {
        let mut r = Reservations::default();
        assert!(register(&mut r, "a", 0, 1, false).is_ok());
        assert!(register(&mut r, "b", 0, 2, false).is_ok());
        assert_eq!(register(&mut r, "b", 9, 3, false), Err(CONFLICT));
        assert!(reserve(&mut r, "a", Some(ReservationType::WriteExclusive)).is_ok());
        assert!(r.conflicts("b", true) && !r.conflicts("b", false) && !r.conflicts("a", true));
        assert_eq!(reserve(&mut r, "b", Some(ReservationType::WriteExclusive)), Err(CONFLICT));
        assert!(release(&mut r, "a", Some(ReservationType::ExclusiveAccess)).is_err());
        assert!(release(&mut r, "a", Some(ReservationType::WriteExclusive)).is_ok());
        assert!(!r.conflicts("b", true));
        assert!(reserve(&mut r, "a", Some(ReservationType::ExclusiveAccess)).is_ok());
        assert!(preempt(&mut r, "b", 1, Some(ReservationType::ExclusiveAccess)).is_ok());
        assert_eq!(r.registrations, vec![("b".to_owned(), 2)]);
        assert!(r.conflicts("a", false) && !r.conflicts("b", true));
        assert!(register(&mut r, "b", 2, 0, false).is_ok());
        assert_eq!(r.reservation, None, "the holder's unregistering releases");
    }

    #[test]
    fn other_registrants_are_told_of_preemption_clearing_and_release() {
        let mut r = Reservations::default();
        for (port, key) in [("a", 1), ("b", 2), ("c", 3)] {
            assert!(register(&mut r, port, 0, key, false).is_ok());
        }
        assert!(reserve(&mut r, "a", Some(ReservationType::WriteExclusiveRegistrantsOnly)).is_ok());
        let before = r.clone();
        assert!(preempt(&mut r, "b", 1, Some(ReservationType::WriteExclusive)).is_ok());
        assert_eq!(owed(&before, &r, Some("b")), vec![("a".to_string(), Sense::REGISTRATIONS_PREEMPTED)]);
        // Seen from another gateway, the actor is not known: it is still registered, so owed nothing.
        assert_eq!(owed(&before, &r, None), vec![("a".to_string(), Sense::REGISTRATIONS_PREEMPTED)]);
        let before = r.clone();
        assert!(release(&mut r, "b", Some(ReservationType::WriteExclusive)).is_ok());
        assert!(owed(&before, &r, Some("b")).is_empty(), "releasing Write Exclusive owes nothing");
        assert!(reserve(&mut r, "c", Some(ReservationType::ExclusiveAccessAllRegistrants)).is_ok());
        let before = r.clone();
        assert!(release(&mut r, "c", Some(ReservationType::ExclusiveAccessAllRegistrants)).is_ok());
        assert_eq!(owed(&before, &r, Some("c")), vec![("b".to_string(), Sense::RESERVATIONS_RELEASED)]);
        let before = r.clone();
        r.registrations.clear();
        assert_eq!(owed(&before, &r, Some("b")), vec![("c".to_string(), Sense::RESERVATIONS_PREEMPTED)], "CLEAR");
    }
}
