//! The bodies of the fuzz targets in `fuzz/`, also run over random input by a stable test.

use crate::pdu::{self, Digests};

/// Parses arbitrary bytes as a PDU under every digest setting; what parses must re-encode to
/// the same bytes (up to the padding and reserved AHS bytes the encoder normalizes).
pub fn parse_pdu(data: &[u8]) {
    for (header, data_digest) in [(false, false), (true, false), (false, true), (true, true)] {
        let d = Digests { header, data: data_digest };
        if let Ok((p, used)) = pdu::parse(data, d, 1 << 16) {
            let again = pdu::parse(&p.encode(d), d, 1 << 16).expect("an encoded PDU parses");
            assert_eq!(again.0, p);
            assert!(used <= data.len());
        }
    }
    let _ = crate::text::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::text::binary(s);
        let _ = crate::text::number(s);
    }
}

/// A login request that takes a session straight to full feature phase on volume "disk".
pub fn login_request() -> bytes::Bytes {
    let mut p = pdu::Pdu::new(pdu::Opcode::LoginRequest);
    p.set_immediate(true);
    p.set_flags(0x80 | 1 << 2 | 3);
    p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
    let keys = "InitiatorName=iqn.2025-01.invalid:fuzz\0TargetName=iqn.2025-01.invalid.cleave:cleave:disk\0\
                ImmediateData=Yes\0InitialR2T=No\0";
    p.data = bytes::Bytes::from_static(keys.as_bytes());
    p.encode(Digests::default())
}

/// A whole connection fed `data`: with an even first byte a valid login comes first, so the
/// input exercises full feature phase. The server must neither panic nor hang.
pub async fn session(data: &[u8]) {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut access = crate::StaticAccess::default();
    let dev: Arc<dyn cleave_nbd::BlockDevice> = Arc::new(cleave_nbd::MemDevice::new(1 << 16));
    access.volumes.insert("disk".into(), dev);
    let server = Arc::new(crate::Server::new(Arc::new(access), crate::ServerConfig::default()));
    let input = match data.split_first() {
        Some((&b, rest)) if b & 1 == 0 => [&login_request()[..], rest].concat(),
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    };
    let (client, srv) = tokio::io::duplex(1 << 16);
    let conn = tokio::spawn(server.serve_connection(srv, None, None));
    let (mut rd, mut wr) = tokio::io::split(client);
    let writer = tokio::spawn(async move {
        // The server may close early; that's fine.
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
    });
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
        let _ = conn.await.expect("serve_connection panicked");
        let _ = writer.await;
    })
    .await;
    assert!(done.is_ok(), "session hung");
}
