//! Status and fixed-format sense data (SPC-4 §4.5.3).

use cleave_nbd::BlockError;

/// SCSI status codes (SAM-5 §5.3) the target returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    CheckCondition,
    ReservationConflict,
    TaskSetFull,
    TaskAborted,
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition => 0x02,
            Status::ReservationConflict => 0x18,
            Status::TaskSetFull => 0x28,
            Status::TaskAborted => 0x40,
        }
    }
}

/// Sense keys (SPC-4 Table 48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    NoSense = 0x0,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

/// One condition: key, additional sense code and qualifier, and where it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: Key,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (e.g. the offset of the first miscompared byte).
    pub info: Option<u32>,
    /// SENSE KEY SPECIFIC: the CDB or parameter byte at fault (field pointer).
    pub field: Option<(bool, u16)>,
}

impl Sense {
    pub const fn new(key: Key, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq, info: None, field: None }
    }

    pub const INVALID_OPCODE: Sense = Sense::new(Key::IllegalRequest, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(Key::IllegalRequest, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(Key::IllegalRequest, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(Key::IllegalRequest, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETERS: Sense = Sense::new(Key::IllegalRequest, 0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH: Sense = Sense::new(Key::IllegalRequest, 0x1a, 0x00);
    pub const INVALID_FIELD_IN_IU: Sense = Sense::new(Key::IllegalRequest, 0x0e, 0x03);
    pub const WRITE_PROTECTED: Sense = Sense::new(Key::DataProtect, 0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(Key::DataProtect, 0x27, 0x07);
    pub const MISCOMPARE: Sense = Sense::new(Key::Miscompare, 0x1d, 0x00);
    pub const READ_ERROR: Sense = Sense::new(Key::MediumError, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(Key::MediumError, 0x0c, 0x00);
    pub const ALUA_CHANGED: Sense = Sense::new(Key::UnitAttention, 0x2a, 0x06);
    pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(Key::UnitAttention, 0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Sense = Sense::new(Key::UnitAttention, 0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(Key::UnitAttention, 0x2a, 0x05);
    pub const ALUA_TRANSITIONING: Sense = Sense::new(Key::NotReady, 0x04, 0x0a);
    pub const ALUA_STANDBY: Sense = Sense::new(Key::NotReady, 0x04, 0x0b);
    pub const ALUA_UNAVAILABLE: Sense = Sense::new(Key::NotReady, 0x04, 0x0c);
    pub const OVERLAPPED_COMMANDS: Sense = Sense::new(Key::AbortedCommand, 0x4e, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(Key::HardwareError, 0x44, 0x00);
    pub const DATA_PHASE_ERROR: Sense = Sense::new(Key::AbortedCommand, 0x4b, 0x00);
    pub const NO_SENSE: Sense = Sense::new(Key::NoSense, 0, 0);

    /// Points at the CDB byte (and implicitly field) that is wrong.
    pub fn at_cdb(mut self, byte: u16) -> Sense {
        self.field = Some((true, byte));
        self
    }

    pub fn with_info(mut self, info: u32) -> Sense {
        self.info = Some(info);
        self
    }

    /// The 18-byte fixed format.
    pub fn fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70 | if self.info.is_some() { 0x80 } else { 0 };
        b[2] = self.key as u8;
        b[3..7].copy_from_slice(&self.info.unwrap_or(0).to_be_bytes());
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some((cdb, byte)) = self.field {
            b[15] = 0x80 | if cdb { 0x40 } else { 0 };
            b[16..18].copy_from_slice(&byte.to_be_bytes());
        }
        b
    }

    /// Sense data for a failed device call.
    pub fn from_block(e: &BlockError, write: bool) -> Sense {
        match e {
            BlockError::ReadOnly | BlockError::Denied(_) => Sense::WRITE_PROTECTED,
            BlockError::NoSpace(_) => Sense::SPACE_ALLOCATION_FAILED,
            BlockError::Invalid(_) => Sense::LBA_OUT_OF_RANGE,
            BlockError::Io(_) if write => Sense::WRITE_ERROR,
            BlockError::Io(_) => Sense::READ_ERROR,
            BlockError::Unavailable(_) => Sense::ALUA_TRANSITIONING,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let b = Sense::MISCOMPARE.with_info(7).fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], 0x0e);
        assert_eq!(&b[3..7], &[0, 0, 0, 7]);
        assert_eq!((b[7], b[12], b[13]), (10, 0x1d, 0));
        let b = Sense::INVALID_FIELD_IN_CDB.at_cdb(1).fixed();
        assert_eq!((b[0], b[15], b[17]), (0x70, 0xc0, 1));
        assert_eq!(Sense::from_block(&BlockError::ReadOnly, true), Sense::WRITE_PROTECTED);
    }
}
