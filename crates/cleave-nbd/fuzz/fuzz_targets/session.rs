//! A whole connection fed from the fuzzer: handshake and transmission over an in-memory pipe.
//! The server must neither panic nor hang, whatever the client sends.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cleave_nbd::proto;
use cleave_nbd::{BlockDevice, ExportProvider, MemDevice, Server, ServerConfig};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Provider(Arc<dyn BlockDevice>, Arc<dyn BlockDevice>);

impl ExportProvider for Provider {
    fn list(&self) -> Vec<String> {
        vec!["disk".into(), "ro".into()]
    }
    fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        match name {
            "disk" => Some(self.0.clone()),
            "ro" => Some(self.1.clone()),
            _ => None,
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let provider = Arc::new(Provider(Arc::new(MemDevice::new(1 << 16)), Arc::new(MemDevice::read_only(4096))));
    let server = Arc::new(Server::new(provider, ServerConfig { max_request: 1 << 16, max_inflight: 4, ..Default::default() }));
    runtime().block_on(async {
        let (client, srv) = tokio::io::duplex(1 << 16);
        let conn = tokio::spawn(server.serve_connection(srv, std::net::SocketAddr::from(([127, 0, 0, 1], 10809))));
        let (mut rd, mut wr) = tokio::io::split(client);
        // Odd first byte: raw bytes from the start (handshake fuzzing). Even: a valid handshake
        // to "disk" or "ro" comes first, so the fuzzer spends its time on transmission.
        let input = match data.split_first() {
            Some((&b, rest)) if b & 1 == 0 => {
                let mut v = 3u32.to_be_bytes().to_vec();
                let export = if b & 2 == 0 { "disk" } else { "ro" };
                v.extend(proto::encode_option(proto::OPT_GO, &proto::encode_info_request(export, &[])));
                v.extend_from_slice(rest);
                v
            }
            Some((_, rest)) => rest.to_vec(),
            None => Vec::new(),
        };
        let writer = tokio::spawn(async move {
            // The server may close early; that's fine.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        });
        let mut sink = Vec::new();
        let done = tokio::time::timeout(Duration::from_secs(10), async {
            let _ = rd.read_to_end(&mut sink).await;
            let _ = conn.await.expect("serve_connection panicked");
            let _ = writer.await;
        })
        .await;
        assert!(done.is_ok(), "session hung");
    });
});
