//! MODE SENSE and MODE SELECT (SPC-4 §7.5): the caching page (WCE) and the control page.

use super::{truncate, Cdb, Lu, Ordering, Outcome, Result, Sense, BLOCK};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const ALL_PAGES: u8 = 0x3f;

/// Which values MODE SENSE reports (the PC field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

impl Lu {
    fn caching_page(&self, pc: PageControl) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = CACHING;
        p[1] = 0x12;
        p[2] = match pc {
            PageControl::Current => u8::from(self.shared.write_cache.load(Ordering::Relaxed)) << 2,
            PageControl::Changeable | PageControl::Default => 0x04,
        };
        p
    }

    fn control_page(&self, pc: PageControl) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p[0] = CONTROL;
        p[1] = 0x0a;
        if pc != PageControl::Changeable {
            p[3] = 0x10; // unrestricted command reordering
            p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
        }
        p
    }

    pub(super) fn mode_sense(&self, cdb: &Cdb<'_>) -> Result<Outcome> {
        let ten = cdb.byte(0) == 0x5a;
        let dbd = cdb.byte(1) & 0x08 != 0;
        let (page, subpage) = (cdb.byte(2) & 0x3f, cdb.byte(3));
        let pc = match cdb.byte(2) >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            // Saved values: SAVING PARAMETERS NOT SUPPORTED.
            _ => return Err(Sense::new(super::Key::IllegalRequest, 0x39, 0x00)),
        };
        if subpage != 0 && !(subpage == 0xff && page == ALL_PAGES) {
            return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(3));
        }
        let pages = match page {
            CACHING => self.caching_page(pc),
            CONTROL => self.control_page(pc),
            ALL_PAGES => [self.caching_page(pc), self.control_page(pc)].concat(),
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)),
        };
        let mut blockdesc = Vec::new();
        if !dbd {
            let n = u32::try_from(self.blocks).unwrap_or(u32::MAX);
            blockdesc.extend_from_slice(&n.to_be_bytes());
            blockdesc.extend_from_slice(&BLOCK.to_be_bytes());
        }
        // Device-specific parameter: WP when read-only, DPOFUA always.
        let dsp = 0x10 | if self.read_only() { 0x80 } else { 0 };
        let body = [blockdesc.as_slice(), &pages].concat();
        let (mut v, alloc) = if ten {
            let len = (body.len() + 6) as u16;
            let mut h = len.to_be_bytes().to_vec();
            h.extend_from_slice(&[0, dsp, 0, 0]);
            h.extend_from_slice(&(blockdesc.len() as u16).to_be_bytes());
            (h, cdb.be(7, 2))
        } else {
            (vec![(body.len() + 3).min(255) as u8, 0, dsp, blockdesc.len() as u8], cdb.byte(4) as u64)
        };
        v.extend(body);
        Ok(Outcome::good(truncate(v, alloc)))
    }

    pub(super) fn mode_select(&self, cdb: &Cdb<'_>, data: &[u8]) -> Result<Outcome> {
        let ten = cdb.byte(0) == 0x55;
        let len = if ten { cdb.be(7, 2) } else { cdb.byte(4) as u64 } as usize;
        // PF must be set (SPC-4 page format); SP (save) is not supported.
        if cdb.byte(1) & 0x11 != 0x10 {
            return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1));
        }
        let data = data.get(..len).ok_or(Sense::PARAMETER_LIST_LENGTH)?;
        let (header, bd_len) = if ten {
            (8, data.get(6..8).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize))
        } else {
            (4, data.get(3).map_or(0, |&b| b as usize))
        };
        let mut pages = data.get(header + bd_len..).ok_or(Sense::PARAMETER_LIST_LENGTH)?;
        let mut wce = None;
        while !pages.is_empty() {
            let (code, plen) = (pages[0] & 0x3f, *pages.get(1).ok_or(Sense::PARAMETER_LIST_LENGTH)? as usize);
            let page = pages.get(..plen + 2).ok_or(Sense::PARAMETER_LIST_LENGTH)?;
            match (code, plen) {
                (CACHING, 0x12) => wce = Some(page[2] & 0x04 != 0),
                (CONTROL, 0x0a) => {}
                _ => return Err(Sense::INVALID_FIELD_IN_PARAMETERS),
            }
            pages = &pages[plen + 2..];
        }
        if let Some(w) = wce {
            self.shared.write_cache.store(w, Ordering::Relaxed);
        }
        Ok(Outcome::good(bytes::Bytes::new()))
    }
}
