//! What the initiator asks about the disk: INQUIRY and its VPD pages, REPORT LUNS, READ
//! CAPACITY, REPORT TARGET PORT GROUPS and REQUEST SENSE.

use md5::{Digest, Md5};

use super::{truncate, Cdb, Lu, Outcome, Result, Sense, BLOCK, MAX_TRANSFER, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS};

/// VPD pages we serve, in ascending order.
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];
/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSIONS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];
/// iSCSI's protocol identifier in designators.
const PROTOCOL_ISCSI: u8 = 0x5;

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(len).collect();
    v.resize(len, b' ');
    v
}

/// A VPD page: header with the page code and length, then the body.
fn vpd(code: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, code];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// One identification descriptor (SPC-4 §7.8.6.1).
fn designator(code_set: u8, association: u8, kind: u8, id: &[u8]) -> Vec<u8> {
    let piv = if association != 0 { 0x80 } else { 0 };
    let mut v = vec![PROTOCOL_ISCSI << 4 | code_set, piv | association << 4 | kind, 0, id.len() as u8];
    v.extend_from_slice(id);
    v
}

impl Lu {
    pub(super) fn inquiry(&self, cdb: &Cdb<'_>) -> Result<Outcome> {
        let (evpd, page, alloc) = (cdb.byte(1) & 1 != 0, cdb.byte(2), cdb.be(3, 2));
        if cdb.byte(1) & 0xfe != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1));
        }
        let data = match (evpd, page) {
            (false, 0) => self.standard_inquiry(),
            (false, _) => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)),
            (true, 0x00) => vpd(0x00, &VPD_PAGES),
            (true, 0x80) => vpd(0x80, self.names.serial.as_bytes()),
            (true, 0x83) => vpd(0x83, &self.identifiers()),
            (true, 0xb0) => vpd(0xb0, &self.block_limits()),
            // Non-rotating medium.
            (true, 0xb1) => vpd(0xb1, &[&[0u8, 1][..], &[0; 58]].concat()),
            // LBPU, LBPWS, LBPWS10; thin provisioned.
            (true, 0xb2) => vpd(0xb2, &[0, 0xe0, 0x02, 0]),
            (true, _) => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)),
        };
        Ok(Outcome::good(truncate(data, alloc)))
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let mut v = vec![0u8; 74];
        v[2] = 0x06; // SPC-4
        v[3] = 0x12; // HISUP, response data format 2
        v[4] = (v.len() - 5) as u8;
        v[5] = 0x10; // TPGS: implicit ALUA
        v[7] = 0x02; // CMDQUE
        v[8..16].copy_from_slice(&padded("CLEAVE", 8));
        v[16..32].copy_from_slice(&padded("cleave volume", 16));
        v[32..36].copy_from_slice(&padded(env!("CARGO_PKG_VERSION"), 4));
        for (i, d) in VERSIONS.iter().enumerate() {
            v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
        }
        v
    }

    /// A stable NAA 6 identifier: derived from the serial, so it survives restarts and gateways.
    pub fn naa(&self) -> [u8; 16] {
        let h: [u8; 16] = Md5::digest(self.names.serial.as_bytes()).into();
        let mut id = h;
        // NAA 6 with a zero OUI: identifiers are unique among Cleave volumes by their serial.
        id[0] = 0x60;
        id[1..3].fill(0);
        id[3] &= 0x0f;
        id
    }

    fn identifiers(&self) -> Vec<u8> {
        let alua = self.alua();
        let mut name = self.names.target.clone().into_bytes();
        name.push(0);
        name.resize(name.len().next_multiple_of(4), 0);
        [
            designator(1, 0, 0x3, &self.naa()),
            designator(1, 1, 0x4, &[0, 0, (alua.local_port >> 8) as u8, alua.local_port as u8]),
            designator(1, 1, 0x5, &[0, 0, (alua.local_group >> 8) as u8, alua.local_group as u8]),
            designator(3, 2, 0x8, &name),
        ]
        .concat()
    }

    fn block_limits(&self) -> Vec<u8> {
        let mut b = vec![0u8; 0x3c];
        b[0] = 1; // WSNZ: WRITE SAME of zero blocks is refused, not "to the end"
        b[1] = 128; // MAXIMUM COMPARE AND WRITE LENGTH
        b[2..4].copy_from_slice(&(1u16 << self.physical_exp).to_be_bytes());
        b[4..8].copy_from_slice(&(MAX_TRANSFER / BLOCK).to_be_bytes());
        b[8..12].copy_from_slice(&(MAX_TRANSFER / BLOCK).to_be_bytes());
        b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
        b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        b[24..28].copy_from_slice(&(1u32 << self.physical_exp).to_be_bytes());
        b[32..40].copy_from_slice(&(MAX_UNMAP_BLOCKS as u64).to_be_bytes());
        b
    }

    pub(super) fn read_capacity10(&self) -> Result<Outcome> {
        let last = u32::try_from(self.blocks.saturating_sub(1)).unwrap_or(u32::MAX);
        Ok(Outcome::good([last.to_be_bytes(), BLOCK.to_be_bytes()].concat()))
    }

    pub(super) fn read_capacity16(&self, cdb: &Cdb<'_>) -> Result<Outcome> {
        let mut v = vec![0u8; 32];
        v[0..8].copy_from_slice(&self.blocks.saturating_sub(1).to_be_bytes());
        v[8..12].copy_from_slice(&BLOCK.to_be_bytes());
        v[13] = self.physical_exp;
        v[14] = 0x80; // LBPME; not LBPRZ: the device does not promise zeroes after a trim
        Ok(Outcome::good(truncate(v, cdb.be(10, 4))))
    }

    pub(super) fn report_target_port_groups(&self, cdb: &Cdb<'_>) -> Result<Outcome> {
        let extended = match cdb.byte(1) >> 5 {
            0 => false,
            1 => true,
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)),
        };
        let alua = self.alua();
        let mut body = Vec::new();
        for g in &alua.groups {
            let pref = 0;
            body.extend_from_slice(&[pref | g.state.code(), 0x8f]);
            body.extend_from_slice(&g.id.to_be_bytes());
            body.extend_from_slice(&[0, 0, 0, g.ports.len() as u8]);
            for p in &g.ports {
                body.extend_from_slice(&[0, 0]);
                body.extend_from_slice(&p.to_be_bytes());
            }
        }
        let mut v = (body.len() as u32 + if extended { 4 } else { 0 }).to_be_bytes().to_vec();
        if extended {
            v.extend_from_slice(&[0x10, 0, 0, 0]);
        }
        v.extend(body);
        Ok(Outcome::good(truncate(v, cdb.be(6, 4))))
    }
}

pub(super) fn report_luns(cdb: &Cdb<'_>) -> Result<Outcome> {
    let alloc = cdb.be(6, 4);
    if cdb.byte(2) > 2 {
        return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(2));
    }
    if alloc < 16 {
        return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(6));
    }
    let mut v = 8u32.to_be_bytes().to_vec();
    v.extend_from_slice(&[0; 12]);
    Ok(Outcome::good(truncate(v, alloc)))
}

/// No sense is ever pending: sense data is returned with the failing command (autosense).
pub(super) fn request_sense(cdb: &Cdb<'_>) -> Result<Outcome> {
    if cdb.byte(1) & 1 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1));
    }
    Ok(Outcome::good(truncate(Sense::NO_SENSE.fixed().to_vec(), cdb.byte(4) as u64)))
}
