//! The two halves of a connection in full feature phase, each on its own task: a reader that
//! parses PDUs for the session, and the only writer, which sends what the session hands it in
//! that order, batching whatever is waiting into one vectored write.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::pdu::{self, Digests, Pdu, PduError, BHS_LEN};
use crate::ConnError;

/// A batch of PDUs to send, with the budget their data holds until it is written.
pub struct Out {
    pub pdus: Vec<Pdu>,
    pub budget: Vec<OwnedSemaphorePermit>,
}

/// Bytes read ahead at least: several PDU headers per read.
const READ_AHEAD: usize = 64 << 10;
/// Bytes gathered into one write at most, so a long backlog does not pile up in one batch.
const BATCH: usize = 4 << 20;

/// Reads PDUs until EOF, a fatal error or the session going away. A data digest error is
/// passed on and reading goes on (the PDU was read whole); any other error ends it.
pub async fn read_in<R>(mut rd: R, d: Digests, max_data: usize, tx: mpsc::Sender<Result<Pdu, ConnError>>)
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        let (item, go_on) = match next_pdu(&mut rd, &mut buf, d, max_data).await {
            Ok(Some(p)) => (Ok(p), true),
            Ok(None) => return,
            Err(e @ ConnError::Pdu(PduError::DataDigest, _)) => (Err(e), true),
            Err(e) => (Err(e), false),
        };
        if tx.send(item).await.is_err() || !go_on {
            return;
        }
    }
}

/// The next PDU through `buf`: each PDU is split off it whole, so its data segment is read from
/// the socket once and never copied. None at a clean EOF before its first byte.
async fn next_pdu<R>(rd: &mut R, buf: &mut BytesMut, d: Digests, max_data: usize) -> Result<Option<Pdu>, ConnError>
where
    R: AsyncRead + Unpin,
{
    if !fill(rd, buf, BHS_LEN).await? {
        return Ok(None);
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    let len = pdu::lengths(&bhs, max_data).map_err(|e| ConnError::Pdu(e, Box::new(bhs)))?;
    let total = BHS_LEN + len.rest(d);
    if !fill(rd, buf, total).await? {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let rest = buf.split_to(total).freeze().slice(BHS_LEN..);
    pdu::parse_owned(bhs, len, rest, d).map(Some).map_err(|e| ConnError::Pdu(e, Box::new(bhs)))
}

/// Reads until `buf` holds `n` bytes, a little ahead; false at EOF with nothing buffered, an
/// error at EOF within a PDU.
async fn fill<R>(rd: &mut R, buf: &mut BytesMut, n: usize) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
{
    while buf.len() < n {
        buf.reserve((n - buf.len()).max(READ_AHEAD));
        if rd.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(true)
}

/// Writes batches in the order they come until the session drops its sender, then shuts the
/// sending side down.
pub async fn write_out<W>(mut wr: W, d: Digests, mut rx: mpsc::Receiver<Out>) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some(first) = rx.recv().await {
        let mut chunks = Chunks::default();
        // Permits go back only once their data is written.
        let mut held = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next.take() {
            for p in &out.pdus {
                let f = p.framed(d);
                chunks.push([f.head, f.data, f.tail]);
            }
            held.extend(out.budget);
            if chunks.remaining() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        wr.write_all_buf(&mut chunks).await?;
        wr.flush().await?;
        drop(held);
    }
    wr.shutdown().await
}

/// Pieces of bytes to write in order, as one [`Buf`] (so writes can be vectored).
#[derive(Default)]
struct Chunks {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, parts: [Bytes; 3]) {
        for b in parts.into_iter().filter(|b| !b.is_empty()) {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b)
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        dst.iter_mut().zip(&self.parts).map(|(d, b)| *d = IoSlice::new(b)).count()
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.parts.front_mut() else { return };
            let k = n.min(front.len());
            front.advance(k);
            self.len -= k;
            n -= k;
            if front.is_empty() {
                self.parts.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_advance_across_pieces() {
        let mut c = Chunks::default();
        c.push([Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"cde")]);
        assert_eq!((c.remaining(), c.chunk()), (5, &b"ab"[..]));
        c.advance(3);
        assert_eq!((c.remaining(), c.chunk()), (2, &b"de"[..]));
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(c.chunks_vectored(&mut slices), 1);
        c.advance(2);
        assert_eq!((c.remaining(), c.chunk()), (0, &b""[..]));
    }
}
