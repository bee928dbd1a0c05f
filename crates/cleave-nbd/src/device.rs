//! What the server exports: the [`BlockDevice`] trait, its errors, and an in-memory device.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::proto;

/// Errors a device returns; mapped to NBD error codes.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("read-only")]
    ReadOnly,
    /// The client's rights do not cover the request.
    #[error("not permitted: {0}")]
    Denied(String),
    /// Not served here now (another gateway took the volume over): retry elsewhere.
    #[error("unavailable here: {0}")]
    Unavailable(String),
}

impl BlockError {
    /// The errno sent to the client.
    pub fn nbd_error(&self) -> u32 {
        match self {
            BlockError::Io(_) => proto::EIO,
            BlockError::NoSpace(_) => proto::ENOSPC,
            BlockError::Invalid(_) => proto::EINVAL,
            BlockError::ReadOnly | BlockError::Denied(_) => proto::EPERM,
            BlockError::Unavailable(_) => proto::ESHUTDOWN,
        }
    }
}

/// A byte-addressed device. The server has already checked bounds, read-only and
/// `len <= max_request` before calling; calls may run concurrently.
#[async_trait::async_trait]
pub trait BlockDevice: Send + Sync {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool {
        false
    }
    /// Safe to advertise NBD_FLAG_CAN_MULTI_CONN: all connections share one cache, and flush covers all of them.
    fn can_multi_conn(&self) -> bool {
        false
    }
    fn preferred_block_size(&self) -> u32 {
        4096
    }
    /// Sent as NBD_INFO_DESCRIPTION when a client asks for it.
    fn description(&self) -> Option<String> {
        None
    }
    /// Must return exactly `len` bytes; anything else is answered with EIO.
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError>;
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError>;
    async fn flush(&self) -> Result<(), BlockError>;
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError>;
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError>;
}

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(std::net::SocketAddr),
    /// A Unix socket. `uid` is the peer's user id, as the kernel reports it.
    Unix {
        uid: Option<u32>,
    },
}

impl From<std::net::SocketAddr> for PeerAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        PeerAddr::Tcp(a)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix { uid: Some(uid) } => write!(f, "unix:uid={uid}"),
            PeerAddr::Unix { uid: None } => f.write_str("unix"),
        }
    }
}

/// Who is on the other end of a connection, as far as the server knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: PeerAddr,
    /// The connection went through NBD_OPT_STARTTLS.
    pub tls: bool,
    /// The client certificate (DER), already verified against the server's client CA.
    pub certificate: Option<Vec<u8>>,
}

impl Peer {
    /// A TCP peer on a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self.addr {
            PeerAddr::Tcp(a) => match a.ip() {
                std::net::IpAddr::V4(a) => a.is_loopback(),
                std::net::IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|a| a.is_loopback()),
            },
            PeerAddr::Unix { .. } => false,
        }
    }

    /// On this machine: a Unix socket or TCP on loopback, where TLS is not required.
    pub fn is_local(&self) -> bool {
        matches!(self.addr, PeerAddr::Unix { .. }) || self.is_loopback()
    }
}

/// Why an export is not handed to a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// NBD_REP_ERR_UNKNOWN. Also used where telling "exists" from "forbidden" would leak names.
    #[error("unknown export")]
    Unknown,
    /// NBD_REP_ERR_TLS_REQD: retry after NBD_OPT_STARTTLS.
    #[error("TLS required: {0}")]
    TlsRequired(String),
    /// NBD_REP_ERR_POLICY.
    #[error("refused: {0}")]
    Denied(String),
}

/// Exports by name. Access control lives in the `*_for` methods; their defaults allow everyone.
pub trait ExportProvider: Send + Sync {
    fn list(&self) -> Vec<String>;
    /// None → the export does not exist (NBD_REP_ERR_UNKNOWN).
    fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>>;
    /// The exports this peer may see (NBD_OPT_LIST, and the default export).
    fn list_for(&self, _peer: &Peer) -> Vec<String> {
        self.list()
    }
    /// The export as this peer may use it (a provider can hand out a read-only or range-limited view).
    fn open_for(&self, name: &str, _peer: &Peer) -> Result<Arc<dyn BlockDevice>, Refusal> {
        self.open(name).ok_or(Refusal::Unknown)
    }
}

/// RAM-backed device for tests and benches. Trim zeroes, so reads after trim are deterministic.
#[derive(Debug)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemDevice {
    /// A zero-filled writable device. Panics if `size` does not fit in memory's address space.
    pub fn new(size: u64) -> Self {
        Self::from_vec(vec![0; usize::try_from(size).expect("MemDevice size fits in usize")], false)
    }

    /// A zero-filled read-only device.
    pub fn read_only(size: u64) -> Self {
        let mut d = Self::new(size);
        d.read_only = true;
        d
    }

    /// A device with the given contents.
    pub fn from_vec(data: Vec<u8>, read_only: bool) -> Self {
        Self { data: RwLock::new(data), read_only }
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock_read().clone()
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<u8>> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<u8>> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, len_total: usize, offset: u64, len: u64) -> Result<std::ops::Range<usize>, BlockError> {
        let end = offset.checked_add(len).filter(|&e| e <= len_total as u64);
        match end {
            Some(end) => Ok(offset as usize..end as usize),
            None => Err(BlockError::Invalid(format!("{offset}+{len} beyond {len_total}"))),
        }
    }

    fn modify(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8])) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut data = self.lock_write();
        let r = self.range(data.len(), offset, len)?;
        f(&mut data[r]);
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.lock_read().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        // One buffer, no cache: every connection sees every completed write.
        true
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        let data = self.lock_read();
        let r = self.range(data.len(), offset, len as u64)?;
        Ok(Bytes::copy_from_slice(&data[r]))
    }

    async fn write(&self, offset: u64, buf: Bytes, _fua: bool) -> Result<(), BlockError> {
        self.modify(offset, buf.len() as u64, |d| d.copy_from_slice(&buf))
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.modify(offset, len as u64, |d| d.fill(0))
    }

    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool) -> Result<(), BlockError> {
        self.modify(offset, len as u64, |d| d.fill(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mem_device_basics() {
        let d = MemDevice::new(8192);
        assert_eq!(d.size(), 8192);
        assert!(!BlockDevice::read_only(&d));
        d.write(100, Bytes::from_static(b"hello"), false).await.unwrap();
        assert_eq!(&d.read(100, 5).await.unwrap()[..], b"hello");
        d.write_zeroes(101, 2, false).await.unwrap();
        assert_eq!(&d.read(100, 5).await.unwrap()[..], b"h\0\0lo");
        d.trim(0, 8192).await.unwrap();
        assert!(d.contents().iter().all(|&b| b == 0));
        assert!(matches!(d.read(8190, 3).await, Err(BlockError::Invalid(_))));
        assert!(matches!(d.write(u64::MAX, Bytes::from_static(b"x"), false).await, Err(BlockError::Invalid(_))));

        let ro = MemDevice::read_only(4096);
        assert!(ro.read_only());
        assert!(matches!(ro.write(0, Bytes::from_static(b"x"), false).await, Err(BlockError::ReadOnly)));
        assert_eq!(BlockError::ReadOnly.nbd_error(), proto::EPERM);
        assert_eq!(BlockError::NoSpace(String::new()).nbd_error(), proto::ENOSPC);
    }
}
