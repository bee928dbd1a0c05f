//! Shared test helpers: a target on 127.0.0.1:0 over MemDevices, and external initiators.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;

use cleave_iscsi::{Access, Server, ServerConfig, StaticAccess};
use cleave_nbd::{BlockDevice, MemDevice};

#[allow(unused_imports)]
pub use cleave_iscsi::testing::{target, BASE};
/// The initiator names libiscsi's compliance suite logs in with.
pub const TEST_INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";

pub fn url(addr: SocketAddr, volume: &str) -> String {
    format!("iscsi://{addr}/{}/0", target(volume))
}

/// Access with the given volumes (each a fresh MemDevice of `size` bytes).
pub fn access(volumes: &[&str], size: u64) -> StaticAccess {
    with_devices(volumes.iter().map(|v| (*v, Arc::new(MemDevice::new(size)))).collect())
}

/// Access over devices the test keeps a handle on.
pub fn with_devices(volumes: Vec<(&str, Arc<MemDevice>)>) -> StaticAccess {
    let volumes = volumes.into_iter().map(|(v, d)| (v.to_string(), d as Arc<dyn BlockDevice>)).collect();
    StaticAccess { volumes, ..Default::default() }
}

/// Starts a target on its own runtime thread (external tools block); returns its address.
pub fn start(access: StaticAccess) -> SocketAddr {
    start_with(Arc::new(access))
}

/// The same with any [`Access`].
pub fn start_with(access: Arc<dyn Access>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let server = Arc::new(Server::new(access, ServerConfig::default()));
            let _ = server.serve(listener).await;
        });
    });
    rx.recv().unwrap()
}

/// Asserts that an external tool is installed: `.ci/run` installs them, and a missing tool
/// must fail the test, never skip it.
pub fn have(tool: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is not installed (run .ci/run, which installs libiscsi-bin and qemu-block-extra)");
}

pub fn run(tool: &str, args: &[&str]) -> Output {
    have(tool);
    Command::new(tool).args(args).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[allow(unused_imports)]
pub use cleave_iscsi::testing::{Raw, Reply};
