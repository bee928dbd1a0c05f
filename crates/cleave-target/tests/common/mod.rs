//! S3 servers on loopback for the S3 tests: moto (correctness) and s3s-fs (a fast one).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server on a free loopback port, killed when dropped (also when a test panics).
pub struct Server {
    child: Child,
    pub endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Runs the first of `candidates` (program, arguments; "{port}" is replaced) that starts,
    /// and waits until it accepts connections.
    pub fn start(name: &str, candidates: &[(&str, &[&str])]) -> Server {
        let port = free_port();
        let child = candidates
            .iter()
            .find_map(|(program, args)| {
                Command::new(program)
                    .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name} not found (.ci/run installs it)"));
        let server = Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}
