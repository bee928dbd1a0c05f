//! A hand-written initiator for tests (feature `testing`): logs in, sends CDBs and PDUs,
//! and reads what comes back, so that tests can check what no initiator tool shows (REPORT
//! TARGET PORT GROUPS, unit attentions, rejects).

use std::net::SocketAddr;

use crate::pdu::{self, Digests, Opcode, Pdu};

/// The IQN base of the test targets (and `cleave serve`'s default): volume `v` is
/// `BASE:cleave:v`.
pub const BASE: &str = "iqn.2025-01.invalid.cleave";

/// A volume name's target name under [`BASE`].
pub fn target(volume: &str) -> String {
    format!("{BASE}:cleave:{volume}")
}

/// A hand-written initiator for poking at the wire protocol (blocking; the target runs on
/// its own thread).
pub struct Raw {
    pub s: std::net::TcpStream,
    pub itt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// In force after login.
    pub digests: Digests,
    /// The session's ISID: a new one for each `Raw` (a new session, as initiators do); set
    /// it to another session's before login to reinstate that one.
    pub isid: [u8; 6],
}

static SESSIONS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);

/// What a SCSI command came back with.
#[derive(Debug)]
pub struct Reply {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl Reply {
    /// (sense key, ASC, ASCQ) of fixed-format sense data.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        (self.sense.len() >= 14).then(|| (self.sense[2] & 0xf, self.sense[12], self.sense[13]))
    }
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_be_bytes();
        Raw { s, itt: 1, cmd_sn: 1, exp_stat_sn: 0, digests: Digests::default(), isid: [0x80, 0, 0, 0, n[0], n[1]] }
    }

    pub fn send(&mut self, p: &Pdu) {
        use std::io::Write;
        self.s.write_all(&p.encode(self.digests)).unwrap();
    }

    /// The next PDU, or None when the target closed the connection.
    pub fn recv(&mut self) -> Option<Pdu> {
        use std::io::Read;
        let mut bhs = [0u8; pdu::BHS_LEN];
        self.s.read_exact(&mut bhs).ok()?;
        let len = pdu::lengths(&bhs, 1 << 24).unwrap();
        let mut rest = vec![0u8; len.rest(self.digests)];
        self.s.read_exact(&mut rest).ok()?;
        let p = pdu::parse_rest(bhs, len, &rest, self.digests).unwrap();
        self.exp_stat_sn = p.sn24().wrapping_add(1);
        Some(p)
    }

    /// Logs in straight to full feature phase, skipping the security stage. Returns the
    /// final response's status class and detail.
    pub fn login(&mut self, initiator: &str, volume: &str) -> (u8, u8) {
        self.login_with(initiator, volume, "")
    }

    /// The same with more keys (each ended by a NUL); digests the target agrees to take effect.
    pub fn login_with(&mut self, initiator: &str, volume: &str, extra: &str) -> (u8, u8) {
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.set_immediate(true);
        p.set_flags(0x80 | 1 << 2 | 3);
        p.bhs[8..14].copy_from_slice(&self.isid);
        p.set_itt(self.itt);
        p.set_u32(24, self.cmd_sn);
        let keys = format!(
            "InitiatorName={initiator}\0TargetName={}\0SessionType=Normal\0ImmediateData=Yes\0InitialR2T=No\0\
             MaxRecvDataSegmentLength=65536\0",
            target(volume)
        ) + extra;
        p.data = keys.into_bytes().into();
        self.send(&p);
        let r = self.recv().expect("a login response");
        let answer = String::from_utf8_lossy(&r.data).into_owned();
        self.digests =
            Digests { header: answer.contains("HeaderDigest=CRC32C"), data: answer.contains("DataDigest=CRC32C") };
        (r.bhs[36], r.bhs[37])
    }

    /// PERSISTENT RESERVE OUT with its 24-byte parameter list (reservation key, service
    /// action key): the status.
    pub fn pr_out(&mut self, action: u8, kind: u8, key: u64, sa_key: u64) -> u8 {
        let mut params = [0u8; 24];
        params[..8].copy_from_slice(&key.to_be_bytes());
        params[8..16].copy_from_slice(&sa_key.to_be_bytes());
        self.scsi(&[0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0], &params, 0).status
    }

    /// Sends a SCSI command with its data-out as immediate data; collects Data-In and status.
    pub fn scsi(&mut self, cdb: &[u8], out: &[u8], read: u32) -> Reply {
        self.command(cdb, out, read, 1);
        self.reply().1
    }

    /// Sends a SCSI command with its data-out as immediate data, and waits for nothing. `attr`
    /// is the task attribute: 1 SIMPLE, 2 ORDERED, 3 HEAD OF QUEUE. Returns its ITT.
    pub fn command(&mut self, cdb: &[u8], out: &[u8], read: u32, attr: u8) -> u32 {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        let dir = if !out.is_empty() {
            0x20
        } else if read > 0 {
            0x40
        } else {
            0
        };
        p.set_flags(0x80 | dir | attr);
        self.itt += 1;
        p.set_itt(self.itt);
        p.set_u32(20, if out.is_empty() { read } else { out.len() as u32 });
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        self.cmd_sn += 1;
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        p.data = bytes::Bytes::copy_from_slice(out);
        self.send(&p);
        self.itt
    }

    /// The next command to end: the PDU with its status (SCSI Response, or the last Data-In)
    /// and what it came back with.
    pub fn reply(&mut self) -> (Pdu, Reply) {
        let mut data = Vec::new();
        loop {
            let r = self.recv().expect("a response");
            match r.opcode() {
                Some(Opcode::DataIn) => {
                    data.extend_from_slice(&r.data);
                    if r.flags() & 1 != 0 {
                        let status = r.bhs[3];
                        return (r, Reply { status, sense: Vec::new(), data });
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    let sense = r.data.get(2..).map(|s| s.to_vec()).unwrap_or_default();
                    let status = r.bhs[3];
                    return (r, Reply { status, sense, data });
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Whether nothing arrives for `ms` milliseconds (nothing is consumed).
    pub fn quiet(&mut self, ms: u64) -> bool {
        self.s.set_read_timeout(Some(std::time::Duration::from_millis(ms))).unwrap();
        let got = self.s.peek(&mut [0u8; 1]);
        self.s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        got.is_err()
    }
}
