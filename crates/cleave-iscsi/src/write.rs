//! A write waiting for its data (RFC 7143 §11.7-11.8): the unsolicited first burst, then one
//! R2T's sequence at a time, in order, each Data-Out checked against what was asked for.

use bytes::{Bytes, BytesMut};

use crate::pdu::{Pdu, NO_TAG};

/// The part of a command the target still expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Unsolicited Data-Out up to this offset (the first burst).
    Unsolicited { until: u32 },
    /// Data for the outstanding R2T.
    Solicited { ttt: u32, until: u32 },
}

/// A write waiting for its data.
pub(crate) struct WriteTask {
    /// Data as it came: joined once, when complete.
    pub(crate) parts: Vec<Bytes>,
    /// Bytes received so far; data arrives in order (DataPDUInOrder=Yes).
    pub(crate) received: u32,
    pub(crate) phase: Phase,
    pub(crate) data_sn: u32,
    pub(crate) r2t_sn: u32,
}

impl WriteTask {
    pub(crate) fn until(&self) -> u32 {
        match self.phase {
            Phase::Unsolicited { until } | Phase::Solicited { until, .. } => until,
        }
    }

    pub(crate) fn take_data(&mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.remove(0),
            _ => {
                let mut buf = BytesMut::with_capacity(self.received as usize);
                self.parts.drain(..).for_each(|p| buf.extend_from_slice(&p));
                buf.freeze()
            }
        }
    }

    /// Takes a Data-Out: whether it ended a sequence, or an error when it does not fit.
    pub(crate) fn accept(&mut self, p: &Pdu) -> Result<bool, ()> {
        let ttt = match self.phase {
            Phase::Unsolicited { .. } => NO_TAG,
            Phase::Solicited { ttt, .. } => ttt,
        };
        let (until, offset, len) = (self.until(), p.u32_at(40), p.data.len() as u32);
        let fits = offset == self.received && offset.checked_add(len).is_some_and(|e| e <= until);
        if p.field20() != ttt || p.u32_at(36) != self.data_sn || !fits {
            return Err(());
        }
        self.parts.push(p.data.clone());
        self.received += len;
        self.data_sn = self.data_sn.wrapping_add(1);
        if p.final_bit() && self.received < until {
            // The initiator ended the sequence early: it will never send the rest.
            return Err(());
        }
        let ended = p.final_bit() || self.received == until;
        if ended && matches!(self.phase, Phase::Unsolicited { .. }) {
            self.phase = Phase::Unsolicited { until: self.received };
        }
        Ok(ended)
    }
}
