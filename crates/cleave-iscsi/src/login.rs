//! The login phase (RFC 7143 §6.3): security stage (CHAP), operational stage (negotiation), then
//! full feature phase. One [`Login`] per connection consumes Login Requests and answers each.

use crate::access::{Access, Identity, Opened};
use crate::chap::{self, Challenge};
use crate::negotiate::{self, Limits, Params};
use crate::pdu::{Opcode, Pdu};
use crate::text;

/// Why a login ended; each maps to a Status-Class and Status-Detail (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("initiator error")]
    Initiator,
    #[error("authentication failed")]
    Authentication,
    #[error("target not found")]
    NotFound,
    #[error("missing parameter")]
    MissingParameter,
    #[error("unsupported version")]
    Version,
    #[error("session type not supported")]
    SessionType,
    #[error("session does not exist")]
    NoSession,
    #[error("invalid request during login")]
    Invalid,
}

impl LoginError {
    pub fn status(self) -> (u8, u8) {
        match self {
            LoginError::Initiator => (2, 0x00),
            LoginError::Authentication => (2, 0x01),
            LoginError::NotFound => (2, 0x03),
            LoginError::MissingParameter => (2, 0x07),
            LoginError::Version => (2, 0x05),
            LoginError::SessionType => (2, 0x09),
            LoginError::NoSession => (2, 0x0a),
            LoginError::Invalid => (2, 0x0b),
        }
    }
}

/// Login stages as CSG/NSG encode them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Security,
    Operational,
    FullFeature,
}

impl Stage {
    fn from_bits(b: u8) -> Option<Stage> {
        match b & 3 {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
    fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::FullFeature => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// Where authentication stands.
#[derive(Debug, Clone)]
enum Auth {
    /// No AuthMethod chosen yet.
    Open,
    /// CHAP chosen; waiting for CHAP_A.
    ChapChosen,
    Challenged(Challenge),
    Done,
}

/// Target-wide settings login needs.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Target names are `<iqn_base>:cleave:<volume>`.
    pub iqn_base: String,
    pub limits: Limits,
    /// Commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1).
    pub window: u32,
}

/// What a successful login hands to the session.
pub struct LoggedIn {
    pub kind: SessionType,
    pub identity: Identity,
    pub volume: Option<(String, Opened)>,
    pub params: Params,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
}

/// What one Login Request led to.
pub enum Step {
    /// Send the response and wait for the next request.
    Continue(Pdu),
    /// Send the response; the session is in full feature phase.
    Done(Pdu, Box<LoggedIn>),
    /// Send the response and close.
    Fail(Pdu, LoginError),
}

pub struct Login<'a> {
    access: &'a dyn Access,
    cfg: &'a LoginConfig,
    stage: Stage,
    kind: Option<SessionType>,
    identity: Option<Identity>,
    volume_name: Option<String>,
    volume: Option<(String, Opened)>,
    auth: Auth,
    params: Params,
    declared: bool,
    /// Text of a request sent in parts (C bit).
    partial: Vec<u8>,
    isid: [u8; 6],
    tsih: u16,
    stat_sn: u32,
    exp_cmd_sn: u32,
    started: bool,
}

/// Longest login text accepted, over all the PDUs of one request.
const MAX_LOGIN_TEXT: usize = 64 << 10;

type Answer = Result<text::Pairs, LoginError>;

impl<'a> Login<'a> {
    pub fn new(access: &'a dyn Access, cfg: &'a LoginConfig, addr: Option<std::net::SocketAddr>, tsih: u16) -> Self {
        let identity = Some(Identity { initiator: String::new(), chap_name: None, addr });
        Login {
            access,
            cfg,
            stage: Stage::Security,
            kind: None,
            identity,
            volume_name: None,
            volume: None,
            auth: Auth::Open,
            params: Params::default(),
            declared: false,
            partial: Vec::new(),
            isid: [0; 6],
            tsih,
            stat_sn: 0,
            exp_cmd_sn: 0,
            started: false,
        }
    }

    /// Handles one PDU received during login.
    pub fn step(&mut self, req: &Pdu) -> Step {
        if req.opcode() != Some(Opcode::LoginRequest) {
            return self.fail(req, LoginError::Invalid);
        }
        let (transit, cont) = (req.flags() & 0x80 != 0, req.flags() & 0x40 != 0);
        let Some(csg) = Stage::from_bits(req.flags() >> 2) else { return self.fail(req, LoginError::Initiator) };
        let nsg = Stage::from_bits(req.flags());
        if !self.started {
            self.started = true;
            self.isid.copy_from_slice(&req.bhs[8..14]);
            self.stat_sn = req.sn28();
            self.exp_cmd_sn = req.sn24();
            if req.bhs[3] > 0 {
                return self.fail(req, LoginError::Version);
            }
            if u16::from_be_bytes([req.bhs[14], req.bhs[15]]) != 0 {
                // One connection per session: nothing to add a connection to.
                return self.fail(req, LoginError::NoSession);
            }
        } else if csg != self.stage || req.bhs[8..14] != self.isid {
            return self.fail(req, LoginError::Initiator);
        }
        self.stage = csg;
        // Text split over PDUs (C bit) is bounded, or login could hold any amount of memory.
        if self.partial.len() + req.data.len() > MAX_LOGIN_TEXT {
            return self.fail(req, LoginError::Initiator);
        }
        self.partial.extend_from_slice(&req.data);
        if cont {
            return Step::Continue(self.response(req, false, csg, csg, Vec::new()));
        }
        let data = std::mem::take(&mut self.partial);
        let answer = text::parse(&data).map_err(|_| LoginError::Initiator).and_then(|pairs| self.handle(csg, &pairs));
        let mut pairs = match answer {
            Ok(p) => p,
            Err(e) => return self.fail(req, e),
        };
        let next = match (transit, nsg) {
            (true, Some(n)) if n > csg => n,
            (true, _) => return self.fail(req, LoginError::Initiator),
            (false, _) => csg,
        };
        // Leaving security needs finished authentication; we answer T=0 until then.
        let ready = csg != Stage::Security || matches!(self.auth, Auth::Done);
        if next != csg && ready {
            if let Err(e) = self.leave(csg) {
                return self.fail(req, e);
            }
            if !self.declared {
                self.declared = true;
                pairs.push(("MaxRecvDataSegmentLength".into(), self.cfg.limits.max_recv_data.to_string()));
            }
        }
        let moved = next != csg && ready;
        let nsg = if moved { next } else { csg };
        if moved {
            self.stage = next;
        }
        let resp = self.response(req, moved, csg, nsg, pairs);
        if nsg == Stage::FullFeature {
            return self.finish(resp);
        }
        Step::Continue(resp)
    }

    fn finish(&mut self, resp: Pdu) -> Step {
        let Some(identity) = self.identity.take() else { return Step::Fail(resp, LoginError::Initiator) };
        let logged = LoggedIn {
            kind: self.kind.unwrap_or(SessionType::Normal),
            identity,
            volume: self.volume.take(),
            params: self.params.clone(),
            isid: self.isid,
            tsih: self.tsih,
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
        };
        Step::Done(resp, Box::new(logged))
    }

    /// Keys of one complete request.
    fn handle(&mut self, csg: Stage, pairs: &[(String, String)]) -> Answer {
        let mut out = Vec::new();
        if self.kind.is_none() {
            out.extend(self.first(pairs)?);
        }
        if csg == Stage::Security {
            out.extend(self.security(pairs)?);
        } else if self.access.chap_required(&self.initiator()) && !matches!(self.auth, Auth::Done) {
            // Skipping the security stage is only for initiators that need no CHAP.
            return Err(LoginError::Authentication);
        } else {
            self.auth = Auth::Done;
        }
        let ops: Vec<_> = pairs.iter().filter(|(k, _)| !k.starts_with("CHAP_")).cloned().collect();
        out.extend(negotiate::answer_all(&ops, &mut self.params, &self.cfg.limits));
        Ok(out)
    }

    fn initiator(&self) -> String {
        self.identity.as_ref().map(|i| i.initiator.clone()).unwrap_or_default()
    }

    /// The first request names the initiator, the session type and the target.
    fn first(&mut self, pairs: &[(String, String)]) -> Answer {
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let initiator = get("InitiatorName").ok_or(LoginError::MissingParameter)?.to_ascii_lowercase();
        let kind = match get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginError::SessionType),
        };
        if kind == SessionType::Normal {
            let target = get("TargetName").ok_or(LoginError::MissingParameter)?.to_ascii_lowercase();
            let prefix = format!("{}:cleave:", self.cfg.iqn_base.to_ascii_lowercase());
            let volume = target.strip_prefix(&prefix).ok_or(LoginError::NotFound)?;
            self.volume_name = Some(volume.to_owned());
        }
        if let Some(id) = self.identity.as_mut() {
            id.initiator = initiator;
        }
        self.kind = Some(kind);
        Ok(vec![("TargetPortalGroupTag".into(), "1".into())])
    }

    fn security(&mut self, pairs: &[(String, String)]) -> Answer {
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        let initiator = self.initiator();
        let required = self.access.chap_required(&initiator);
        let mut out = Vec::new();
        if let Some(methods) = get("AuthMethod") {
            let chap = methods.split(',').any(|m| m == "CHAP");
            let none = methods.split(',').any(|m| m == "None");
            let choice = match (required, chap, none) {
                (true, true, _) | (false, true, false) => "CHAP",
                (false, _, true) => "None",
                _ => return Err(LoginError::Authentication),
            };
            self.auth = if choice == "CHAP" { Auth::ChapChosen } else { Auth::Done };
            out.push(("AuthMethod".into(), choice.into()));
        }
        match (&self.auth, get("CHAP_A"), get("CHAP_R")) {
            (Auth::ChapChosen, Some(a), _) => {
                let (c, pairs) = Challenge::issue(a).map_err(|_| LoginError::Authentication)?;
                self.auth = Auth::Challenged(c);
                out.extend(pairs);
            }
            (Auth::Challenged(c), _, Some(r)) => {
                let c = c.clone();
                out.extend(self.check_chap(&c, &initiator, r, get("CHAP_N"), get("CHAP_I"), get("CHAP_C"))?);
            }
            (Auth::Open, _, _) if !required => self.auth = Auth::Done,
            (Auth::Open | Auth::ChapChosen | Auth::Challenged(_), _, _) => {
                if get("CHAP_A").is_some() || get("CHAP_R").is_some() {
                    return Err(LoginError::Authentication);
                }
            }
            (Auth::Done, _, _) => {}
        }
        Ok(out)
    }

    fn check_chap(
        &mut self,
        c: &Challenge,
        initiator: &str,
        r: &str,
        name: Option<&str>,
        mutual_i: Option<&str>,
        mutual_c: Option<&str>,
    ) -> Answer {
        let name = name.ok_or(LoginError::Authentication)?;
        let secret = self.access.chap_secret(initiator, name).ok_or(LoginError::Authentication)?;
        c.verify(&secret, r).map_err(|_| LoginError::Authentication)?;
        let out = match (mutual_i, mutual_c) {
            (Some(i), Some(mc)) => {
                let (tname, tsecret) = self.access.target_secret(initiator).ok_or(LoginError::Authentication)?;
                c.mutual(i, mc, &tname, &tsecret).map_err(|_: chap::ChapError| LoginError::Authentication)?
            }
            (None, None) => Vec::new(),
            _ => return Err(LoginError::Authentication),
        };
        if let Some(id) = self.identity.as_mut() {
            id.chap_name = Some(name.to_owned());
        }
        self.auth = Auth::Done;
        Ok(out)
    }

    /// Checks run when leaving a stage: after security, the initiator must be allowed the target.
    fn leave(&mut self, csg: Stage) -> Result<(), LoginError> {
        if self.volume.is_some() || self.kind != Some(SessionType::Normal) || csg == Stage::FullFeature {
            return Ok(());
        }
        let identity = self.identity.as_ref().ok_or(LoginError::Initiator)?;
        let name = self.volume_name.clone().ok_or(LoginError::NotFound)?;
        if !self.access.volumes(identity).contains(&name) {
            return Err(LoginError::NotFound);
        }
        let opened = self.access.open(&name, identity).ok_or(LoginError::NotFound)?;
        self.volume = Some((name, opened));
        Ok(())
    }

    fn response(&mut self, req: &Pdu, transit: bool, csg: Stage, nsg: Stage, pairs: text::Pairs) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginResponse);
        p.set_flags(if transit { 0x80 } else { 0 } | csg.bits() << 2 | if transit { nsg.bits() } else { 0 });
        p.bhs[8..14].copy_from_slice(&self.isid);
        if transit && nsg == Stage::FullFeature {
            p.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        }
        p.set_itt(req.itt());
        p.set_u32(24, self.stat_sn);
        p.set_u32(28, self.exp_cmd_sn);
        p.set_u32(32, self.exp_cmd_sn.wrapping_add(self.cfg.window - 1));
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.data = text::encode(&pairs).into();
        p
    }

    fn fail(&mut self, req: &Pdu, e: LoginError) -> Step {
        let mut p = self.response(req, false, self.stage, self.stage, Vec::new());
        (p.bhs[36], p.bhs[37]) = e.status();
        Step::Fail(p, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::StaticAccess;
    use crate::chap::response;

    const INITIATOR: &str = "iqn.2025-01.invalid.test:one";

    fn access(chap: bool) -> StaticAccess {
        let mut a = StaticAccess::default();
        let dev: std::sync::Arc<dyn cleave_nbd::BlockDevice> = std::sync::Arc::new(cleave_nbd::MemDevice::new(4096));
        a.volumes.insert("disk".into(), dev);
        if chap {
            a.chap.insert(INITIATOR.into(), ("alice".into(), b"secretsecret".to_vec()));
            a.target_chap = Some(("tgt".into(), b"targetsecret".to_vec()));
        }
        a
    }

    fn config() -> LoginConfig {
        LoginConfig { iqn_base: "iqn.x".into(), limits: Limits::default(), window: 8 }
    }

    fn request(csg: u8, nsg: Option<u8>, keys: &str) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.set_flags(csg << 2 | nsg.map_or(0, |n| 0x80 | n));
        p.bhs[8] = 0x80;
        p.data = keys.replace(';', "\0").into_bytes().into();
        p
    }

    fn pairs(p: &Pdu) -> text::Pairs {
        text::parse(&p.data).unwrap()
    }

    fn get(p: &Pdu, k: &str) -> String {
        pairs(p).into_iter().find(|(x, _)| x == k).map(|(_, v)| v).unwrap_or_default()
    }

    #[test]
    fn chap_one_way_and_mutual_then_operational() {
        let (a, cfg) = (access(true), config());
        let mut l = Login::new(&a, &cfg, None, 7);
        let first = format!("InitiatorName={INITIATOR};TargetName=iqn.x:cleave:disk;AuthMethod=CHAP,None;");
        let Step::Continue(r) = l.step(&request(0, Some(1), &first)) else { panic!("refused") };
        assert_eq!((get(&r, "AuthMethod"), r.flags() & 0x80), ("CHAP".into(), 0), "no transit before CHAP");
        let Step::Continue(r) = l.step(&request(0, Some(1), "CHAP_A=5;")) else { panic!("refused") };
        let id: u8 = get(&r, "CHAP_I").parse().unwrap();
        let c = text::binary(&get(&r, "CHAP_C")).unwrap();
        let answer = text::hex(&response(id, b"secretsecret", &c));
        let keys = format!("CHAP_N=alice;CHAP_R={answer};CHAP_I=9;CHAP_C=0x0102030405;");
        let Step::Continue(r) = l.step(&request(0, Some(1), &keys)) else { panic!("refused") };
        assert_eq!(r.flags() & 0x83, 0x81, "transit to operational");
        assert_eq!(get(&r, "CHAP_R"), text::hex(&response(9, b"targetsecret", &[1, 2, 3, 4, 5])));
        let Step::Done(r, logged) = l.step(&request(1, Some(3), "HeaderDigest=CRC32C,None;")) else { panic!() };
        assert_eq!((get(&r, "HeaderDigest"), u16::from_be_bytes([r.bhs[14], r.bhs[15]])), ("CRC32C".into(), 7));
        assert_eq!(
            (logged.identity.chap_name.as_deref(), logged.volume.map(|v| v.0)),
            (Some("alice"), Some("disk".into()))
        );
    }

    #[test]
    fn refusals() {
        let (a, cfg) = (access(true), config());
        let first = format!("InitiatorName={INITIATOR};TargetName=iqn.x:cleave:disk;");
        // CHAP required: skipping the security stage fails.
        let mut l = Login::new(&a, &cfg, None, 1);
        assert!(matches!(l.step(&request(1, Some(3), &first)), Step::Fail(_, LoginError::Authentication)));
        // A wrong response.
        let mut l = Login::new(&a, &cfg, None, 1);
        l.step(&request(0, Some(1), &format!("{first}AuthMethod=CHAP;")));
        l.step(&request(0, Some(1), "CHAP_A=5;"));
        let step = l.step(&request(0, Some(1), "CHAP_N=alice;CHAP_R=0x00112233445566778899aabbccddeeff;"));
        assert!(matches!(step, Step::Fail(r, LoginError::Authentication) if (r.bhs[36], r.bhs[37]) == (2, 1)));
        // No CHAP needed, unknown target: not found when leaving the stage.
        let a = access(false);
        let mut l = Login::new(&a, &cfg, None, 1);
        let other = format!("InitiatorName={INITIATOR};TargetName=iqn.x:cleave:nope;");
        assert!(matches!(l.step(&request(1, Some(3), &other)), Step::Fail(_, LoginError::NotFound)));
        // A version we do not speak, and a TSIH for a session that does not exist.
        let mut l = Login::new(&a, &cfg, None, 1);
        let mut p = request(1, Some(3), &first);
        p.bhs[3] = 1;
        assert!(matches!(l.step(&p), Step::Fail(_, LoginError::Version)));
        let mut l = Login::new(&a, &cfg, None, 1);
        let mut p = request(1, Some(3), &first);
        p.bhs[15] = 5;
        assert!(matches!(l.step(&p), Step::Fail(_, LoginError::NoSession)));
    }

    #[test]
    fn text_in_parts_and_discovery() {
        let (a, cfg) = (access(false), config());
        let mut l = Login::new(&a, &cfg, None, 1);
        let mut part = request(1, None, &format!("InitiatorName={INITIATOR};Sess"));
        part.set_flags(part.flags() | 0x40);
        assert!(matches!(l.step(&part), Step::Continue(r) if r.data.is_empty()));
        let Step::Done(_, logged) = l.step(&request(1, Some(3), "ionType=Discovery;")) else { panic!() };
        assert_eq!((logged.kind, logged.volume.is_none()), (SessionType::Discovery, true));
    }
}
