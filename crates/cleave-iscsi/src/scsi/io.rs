//! Commands that touch the medium (SBC-3): READ, WRITE, VERIFY, WRITE AND VERIFY, WRITE SAME,
//! UNMAP, SYNCHRONIZE CACHE, PRE-FETCH and COMPARE AND WRITE.

use bytes::{Bytes, BytesMut};

use super::{check_range, Cdb, Lu, Ordering, Outcome, Result, Sense, BLOCK, MAX_TRANSFER, MAX_UNMAP_BLOCKS};
use super::{Status, MAX_UNMAP_DESCRIPTORS};

/// The medium-access commands an ALUA standby or unavailable port refuses.
pub(super) fn is_media_access(op: u8) -> bool {
    matches!(
        op,
        0x08 | 0x28 | 0xa8 | 0x88 // READ
            | 0x0a | 0x2a | 0xaa | 0x8a // WRITE
            | 0x2f | 0xaf | 0x8f | 0x2e | 0xae | 0x8e // VERIFY, WRITE AND VERIFY
            | 0x41 | 0x93 | 0x42 | 0x89 | 0x35 | 0x91 // WRITE SAME, UNMAP, COMPARE AND WRITE, SYNC
    )
}

/// Commands that change the medium (a Write Exclusive reservation refuses them).
pub(super) fn is_write(op: u8) -> bool {
    matches!(op, 0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x42 | 0x89)
}

/// The data-out length a command's CDB asks for (SPDTL), for the iSCSI residual count.
pub fn data_out_len(cdb: &[u8]) -> u64 {
    let c = Cdb(cdb);
    let blocks = |n: u64| n * BLOCK as u64;
    match c.byte(0) {
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => blocks(lba_len(&c).1),
        0x2f | 0xaf | 0x8f => match (c.byte(1) >> 1) & 3 {
            1 => blocks(lba_len(&c).1),
            3 => blocks(1),
            _ => 0,
        },
        0x41 => blocks(1),
        0x93 if c.byte(1) & 1 == 0 => blocks(1),
        0x89 => 2 * blocks(c.byte(13) as u64),
        0x42 | 0x55 => c.be(7, 2),
        0x5f => c.be(5, 4),
        0x15 => c.byte(4) as u64,
        _ => 0,
    }
}

/// The data-in length a READ's CDB asks for (what the device is read for).
pub fn data_in_len(cdb: &[u8]) -> u64 {
    let c = Cdb(cdb);
    match c.byte(0) {
        0x08 | 0x28 | 0xa8 | 0x88 => lba_len(&c).1 * BLOCK as u64,
        _ => 0,
    }
}

/// LBA and block count as the CDB's size lays them out (SBC-3 §5: 6, 10, 12 and 16 bytes).
fn lba_len(cdb: &Cdb<'_>) -> (u64, u64) {
    match cdb.byte(0) >> 5 {
        0 => {
            let len = cdb.byte(4) as u64;
            (cdb.be(1, 3) & 0x1f_ffff, if len == 0 { 256 } else { len })
        }
        1 | 2 => (cdb.be(2, 4), cdb.be(7, 2)),
        5 => (cdb.be(2, 4), cdb.be(6, 4)),
        _ => (cdb.be(2, 8), cdb.be(10, 4)),
    }
}

/// Protection information is not supported: RDPROTECT/WRPROTECT/VRPROTECT must be zero.
fn no_protect(cdb: &Cdb<'_>) -> Result<()> {
    if cdb.byte(0) >> 5 != 0 && cdb.byte(1) & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1));
    }
    Ok(())
}

fn fua(cdb: &Cdb<'_>) -> bool {
    cdb.byte(0) >> 5 != 0 && cdb.byte(1) & 0x08 != 0
}

fn bytes_of(blocks: u64) -> Result<u32> {
    u32::try_from(blocks * BLOCK as u64).ok().filter(|&b| b <= MAX_TRANSFER).ok_or(Sense::INVALID_FIELD_IN_CDB)
}

/// The offset of the first differing byte, if any.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u32> {
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| i as u32)
}

impl Lu {
    pub(super) async fn dispatch_io(&self, op: u8, cdb: &Cdb<'_>, data: Bytes) -> Result<Outcome> {
        match op {
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(cdb).await,
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => self.write(cdb, data).await,
            0x2f | 0xaf | 0x8f => self.verify(cdb, data).await,
            0x41 | 0x93 => self.write_same(cdb, data).await,
            0x42 => self.unmap(cdb, &data).await,
            0x35 | 0x91 | 0x34 | 0x90 => self.sync_or_prefetch(op, cdb).await,
            0x89 => self.compare_and_write(cdb, data).await,
            _ => Err(Sense::INVALID_OPCODE.at_cdb(0)),
        }
    }

    async fn read_blocks(&self, lba: u64, blocks: u64) -> Result<Bytes> {
        let len = bytes_of(blocks)?;
        let data = self.device.read(lba * BLOCK as u64, len).await.map_err(|e| Sense::from_block(&e, false))?;
        if data.len() != len as usize {
            return Err(Sense::READ_ERROR);
        }
        Ok(data)
    }

    async fn read(&self, cdb: &Cdb<'_>) -> Result<Outcome> {
        no_protect(cdb)?;
        let (lba, len) = lba_len(cdb);
        check_range(lba, len, self.blocks)?;
        Ok(Outcome::good(self.read_blocks(lba, len).await?))
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only() {
            return Err(Sense::WRITE_PROTECTED);
        }
        Ok(())
    }

    /// A write is forced to stable storage when FUA is set or the write cache is off.
    fn durable(&self, cdb: &Cdb<'_>) -> bool {
        fua(cdb) || !self.shared.write_cache.load(Ordering::Relaxed)
    }

    async fn write(&self, cdb: &Cdb<'_>, data: Bytes) -> Result<Outcome> {
        no_protect(cdb)?;
        let (lba, len) = lba_len(cdb);
        check_range(lba, len, self.blocks)?;
        let bytes = bytes_of(len)?;
        self.check_writable()?;
        // An iSCSI expected length that differs from the CDB's: write only what both cover
        // (FCP-4 §9.4.2 a); the transport reports the residual.
        let data = data.slice(..data.len().min(bytes as usize));
        if !data.is_empty() {
            let _shared = self.shared.atomic.read().await;
            self.device
                .write(lba * BLOCK as u64, data, self.durable(cdb))
                .await
                .map_err(|e| Sense::from_block(&e, true))?;
        }
        Ok(Outcome::good(Bytes::new()))
    }

    async fn verify(&self, cdb: &Cdb<'_>, data: Bytes) -> Result<Outcome> {
        no_protect(cdb)?;
        let (lba, len) = lba_len(cdb);
        check_range(lba, len, self.blocks)?;
        let bytchk = (cdb.byte(1) >> 1) & 3;
        let want = match bytchk {
            0 => return Ok(Outcome::good(Bytes::new())),
            1 => bytes_of(len)? as usize,
            3 => BLOCK as usize,
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)),
        };
        if data.len() != want {
            return Err(Sense::INVALID_FIELD_IN_IU);
        }
        let on_disk = self.read_blocks(lba, len).await?;
        let diff = if bytchk == 1 {
            first_difference(&on_disk, &data)
        } else {
            on_disk
                .chunks(BLOCK as usize)
                .enumerate()
                .find_map(|(i, c)| first_difference(c, &data).map(|d| i as u32 * BLOCK + d))
        };
        match diff {
            Some(at) => Err(Sense::MISCOMPARE.with_info(at)),
            None => Ok(Outcome::good(Bytes::new())),
        }
    }

    async fn write_same(&self, cdb: &Cdb<'_>, data: Bytes) -> Result<Outcome> {
        no_protect(cdb)?;
        let (lba, len) = lba_len(cdb);
        let (unmap, ndob) = (cdb.byte(1) & 0x08 != 0, cdb.byte(0) == 0x93 && cdb.byte(1) & 1 != 0);
        if cdb.byte(1) & 0x10 != 0 || len > MAX_UNMAP_BLOCKS as u64 || len == 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1));
        }
        check_range(lba, len, self.blocks)?;
        self.check_writable()?;
        let block = match (ndob, data.len() == BLOCK as usize) {
            (true, _) if data.is_empty() => Bytes::from(vec![0u8; BLOCK as usize]),
            (false, true) => data,
            _ => return Err(Sense::INVALID_FIELD_IN_IU),
        };
        let _shared = self.shared.atomic.read().await;
        let fua = self.durable(cdb);
        let (start, total) = (lba * BLOCK as u64, len * BLOCK as u64);
        if block.iter().all(|&b| b == 0) {
            // Zeroes: the device may deallocate, which is what UNMAP asks for anyway.
            let _ = unmap;
            return self.chunked(start, total, |o, l| self.device.write_zeroes(o, l, fua)).await;
        }
        let per = (MAX_TRANSFER / BLOCK) as u64;
        let mut at = 0;
        while at < len {
            let n = per.min(len - at);
            let mut buf = BytesMut::with_capacity((n * BLOCK as u64) as usize);
            (0..n).for_each(|_| buf.extend_from_slice(&block));
            let off = (lba + at) * BLOCK as u64;
            self.device.write(off, buf.freeze(), fua).await.map_err(|e| Sense::from_block(&e, true))?;
            at += n;
        }
        Ok(Outcome::good(Bytes::new()))
    }

    /// Runs `f` over a byte range in pieces a device call can take.
    async fn chunked<F, Fut>(&self, start: u64, total: u64, f: F) -> Result<Outcome>
    where
        F: Fn(u64, u32) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), cleave_nbd::BlockError>>,
    {
        const PIECE: u64 = 1 << 30;
        let mut at = 0;
        while at < total {
            let n = PIECE.min(total - at);
            f(start + at, n as u32).await.map_err(|e| Sense::from_block(&e, true))?;
            at += n;
        }
        Ok(Outcome::good(Bytes::new()))
    }

    async fn unmap(&self, cdb: &Cdb<'_>, data: &[u8]) -> Result<Outcome> {
        let plen = cdb.be(7, 2) as usize;
        if cdb.byte(1) & 1 != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(1));
        }
        if plen == 0 {
            return Ok(Outcome::good(Bytes::new()));
        }
        let p = data.get(..plen).filter(|p| p.len() >= 8).ok_or(Sense::PARAMETER_LIST_LENGTH)?;
        let descs = u16::from_be_bytes([p[2], p[3]]) as usize;
        let list = p.get(8..8 + descs).ok_or(Sense::PARAMETER_LIST_LENGTH)?;
        if descs / 16 > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::INVALID_FIELD_IN_PARAMETERS);
        }
        let ranges: Vec<(u64, u64)> = list.chunks_exact(16).map(|d| (Cdb(d).be(0, 8), Cdb(d).be(8, 4))).collect();
        for &(lba, n) in &ranges {
            check_range(lba, n, self.blocks)?;
            if n > MAX_UNMAP_BLOCKS as u64 {
                return Err(Sense::INVALID_FIELD_IN_PARAMETERS);
            }
        }
        self.check_writable()?;
        let _shared = self.shared.atomic.read().await;
        for (lba, n) in ranges {
            self.chunked(lba * BLOCK as u64, n * BLOCK as u64, |o, l| self.device.trim(o, l)).await?;
        }
        Ok(Outcome::good(Bytes::new()))
    }

    async fn sync_or_prefetch(&self, op: u8, cdb: &Cdb<'_>) -> Result<Outcome> {
        let (lba, len) = lba_len(cdb);
        let len = if len == 0 { self.blocks.saturating_sub(lba) } else { len };
        check_range(lba, len, self.blocks)?;
        if matches!(op, 0x35 | 0x91) {
            self.device.flush().await.map_err(|e| Sense::from_block(&e, true))?;
        }
        Ok(Outcome::good(Bytes::new()))
    }

    async fn compare_and_write(&self, cdb: &Cdb<'_>, data: Bytes) -> Result<Outcome> {
        no_protect(cdb)?;
        let (lba, n) = (cdb.be(2, 8), cdb.byte(13) as u64);
        if n > 128 {
            return Err(Sense::INVALID_FIELD_IN_CDB.at_cdb(13));
        }
        check_range(lba, n, self.blocks)?;
        self.check_writable()?;
        let half = (n * BLOCK as u64) as usize;
        if data.len() != 2 * half {
            // NUMBER OF LOGICAL BLOCKS zero with data: the CDB is what is wrong.
            return Err(if n == 0 { Sense::INVALID_FIELD_IN_CDB.at_cdb(13) } else { Sense::INVALID_FIELD_IN_IU });
        }
        if n == 0 {
            return Ok(Outcome::good(Bytes::new()));
        }
        let _exclusive = self.shared.atomic.write().await;
        let on_disk = self.read_blocks(lba, n).await?;
        if let Some(at) = first_difference(&on_disk, &data[..half]) {
            return Ok(Outcome {
                status: Status::CheckCondition,
                data: Bytes::new(),
                sense: Some(Sense::MISCOMPARE.with_info(at)),
            });
        }
        let fua = self.durable(cdb);
        self.device
            .write(lba * BLOCK as u64, data.slice(half..), fua)
            .await
            .map_err(|e| Sense::from_block(&e, true))?;
        Ok(Outcome::good(Bytes::new()))
    }
}
