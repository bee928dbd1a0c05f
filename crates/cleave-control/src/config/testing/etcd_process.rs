//! Real etcd processes for tests: one member or a cluster, on free loopback ports (or on
//! another address, [`EtcdCluster::start_on`]), with their data in a temporary directory;
//! killed when dropped; over TLS with client certificates required ([`EtcdCluster::start_tls`]).
//! A machine without etcd fails the test with what to install: no test is skipped.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::ca::Ca;
use crate::config::{EtcdOptions, EtcdStore, EtcdTls};

/// How long a new cluster may take to elect a leader.
const READY_WITHIN: Duration = Duration::from_secs(30);

struct Member {
    child: Option<Child>,
    client_url: String,
    log: PathBuf,
}

/// A cluster's TLS files: the CA, and a client certificate it issued.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// What a client of the cluster connects with.
    pub fn client(&self) -> EtcdTls {
        let read = |p: &PathBuf| std::fs::read_to_string(p).expect("a TLS file of the test cluster");
        EtcdTls { ca_pem: read(&self.ca), identity: Some((read(&self.cert), Zeroizing::new(read(&self.key)))) }
    }
}

pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    // Dropped last: the members are killed first.
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members as one cluster on loopback and waits until it answers. Panics
    /// (naming the fix) when etcd is not installed.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_on(n, Ipv4Addr::LOCALHOST.into())
    }

    /// The same, every member listening (for clients and peers) on `ip`: e.g. a test's end of
    /// a link between network namespaces. The members start in the caller's thread's network
    /// namespace, where `ip` must be; called from a thread inside another namespace (a
    /// network lab's), they run there.
    pub fn start_on(n: usize, ip: IpAddr) -> EtcdCluster {
        Self::start_with(n, ip, false)
    }

    /// `n` members on loopback that speak only TLS to clients and require a client
    /// certificate from the cluster's CA ([`EtcdCluster::tls_files`]).
    pub fn start_tls(n: usize) -> EtcdCluster {
        Self::start_with(n, Ipv4Addr::LOCALHOST.into(), true)
    }

    fn start_with(n: usize, ip: IpAddr, tls: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ports = free_ports(ip, 2 * n);
        let tls = tls.then(|| write_tls(dir.path(), ip));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let peer_url = |i: usize| format!("http://{host}:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer_url(i))).collect();
        let token = format!("cleave-test-{}", ports[0]);
        let members = (0..n)
            .map(|i| {
                let client_url = format!("{scheme}://{host}:{}", ports[2 * i]);
                let log = dir.path().join(format!("m{i}.log"));
                let mut args = tls.as_ref().map(server_tls_args).unwrap_or_default();
                args.extend([
                    format!("--name=m{i}"),
                    format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={}", peer_url(i)),
                    format!("--initial-advertise-peer-urls={}", peer_url(i)),
                    format!("--initial-cluster={}", initial.join(",")),
                    format!("--initial-cluster-token={token}"),
                    "--initial-cluster-state=new".into(),
                    // Quick elections: a killed leader is replaced within about a second.
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                    "--logger=zap".into(),
                    "--log-outputs=stderr".into(),
                ]);
                let child = spawn(&args, &log);
                Member { child: Some(child), client_url, log }
            })
            .collect();
        let mut cluster = EtcdCluster { members, tls, _dir: dir };
        cluster.wait_ready();
        cluster
    }

    /// The client URLs of the members still running, comma-separated.
    pub fn endpoints(&self) -> String {
        let live = self.members.iter().filter(|m| m.child.is_some());
        live.map(|m| m.client_url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The client URLs of every member, killed or not.
    pub fn all_endpoints(&self) -> String {
        self.members.iter().map(|m| m.client_url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The CA and a client certificate, when the cluster speaks TLS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A store on this cluster under `namespace`, with `timeout` calls.
    pub fn store(&self, namespace: &str, timeout: Duration) -> EtcdStore {
        let mut opts = EtcdOptions::new(&self.all_endpoints());
        opts.namespace = namespace.to_string();
        opts.timeout = timeout;
        opts.tls = self.tls.as_ref().map(TlsFiles::client);
        EtcdStore::connect(opts).unwrap_or_else(|e| panic!("connecting to etcd: {e}\n{}", self.logs()))
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            for (i, m) in self.members.iter_mut().enumerate() {
                if let Some(Ok(Some(status))) = m.child.as_mut().map(Child::try_wait) {
                    m.child = None;
                    panic!("etcd member {i} exited at start ({status}):\n{}", self.logs());
                }
            }
            let mut opts = EtcdOptions::new(&self.endpoints());
            opts.timeout = Duration::from_secs(1);
            opts.tls = self.tls.as_ref().map(TlsFiles::client);
            match EtcdStore::connect(opts) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("etcd did not answer: {e}\n{}", self.logs()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The members' logs, last lines, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!("--- {} ---\n{}\n", m.log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A CA, a server certificate for `ip` and loopback, and a client certificate, in `dir`.
fn write_tls(dir: &std::path::Path, ip: IpAddr) -> TlsFiles {
    let (ca, ca_key) = Ca::generate("etcd-test").expect("a test CA");
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), ip.to_string()];
    let server = ca.issue_server(&names).expect("a server certificate");
    let client = ca.issue_client("cleave-test").expect("a client certificate");
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("writing a TLS file");
        p
    };
    drop(ca_key);
    write("server.crt", &server.cert_pem);
    write("server.key", &server.key_pem);
    TlsFiles {
        ca: write("ca.crt", ca.cert_pem()),
        cert: write("client.crt", &client.cert_pem),
        key: write("client.key", &client.key_pem),
    }
}

/// etcd's flags for TLS to clients, client certificates required.
fn server_tls_args(t: &TlsFiles) -> Vec<String> {
    let dir = t.ca.parent().expect("in the cluster's directory");
    vec![
        format!("--cert-file={}", dir.join("server.crt").display()),
        format!("--key-file={}", dir.join("server.key").display()),
        format!("--trusted-ca-file={}", t.ca.display()),
        "--client-cert-auth".into(),
    ]
}

/// `etcd` from $PATH (Debian: /usr/bin/etcd), output to `log`.
fn spawn(args: &[String], log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("creating the etcd log");
    let out = log.try_clone().expect("cloning the log's handle");
    match Command::new("etcd").args(args).stdin(Stdio::null()).stdout(out).stderr(log).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "etcd is not installed: these tests run real etcd processes. Install it with \
             `apt-get install etcd-server` (Debian; .ci/run does), or put an `etcd` binary on $PATH"
        ),
        Err(e) => panic!("starting etcd: {e}"),
    }
}

/// `n` distinct free ports on `ip` (held together while chosen, so none repeats).
fn free_ports(ip: IpAddr, n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind((ip, 0)).expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}
