//! A target over one RAM disk, for trying initiators by hand:
//! `cargo run -p cleave-iscsi --example memtarget -- 127.0.0.1:3260 [size-MiB]`
//! serves `iqn.2025-01.invalid.cleave:cleave:disk`, LUN 0.

use std::sync::Arc;

use cleave_iscsi::{Server, ServerConfig, StaticAccess};
use cleave_nbd::{BlockDevice, MemDevice};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3260".into());
    let mib: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let mut access = StaticAccess::default();
    access.volumes.insert("disk".into(), Arc::new(MemDevice::new(mib << 20)) as Arc<dyn BlockDevice>);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("serving iqn.2025-01.invalid.cleave:cleave:disk on {}", listener.local_addr()?);
    Arc::new(Server::new(Arc::new(access), ServerConfig::default())).serve(listener).await
}
