//! iSCSI logins as the registry knows them: the initiator names a client logs in from, and the
//! client's CHAP secrets. An initiator belongs to one client and gets that client's rights
//! (its groups' grants), exactly as the client's certificate does over NBD.
//!
//! CHAP is required unless an administrator allows an initiator without it: then its name,
//! which any host can claim, is all that identifies it (docs/security.md).

use serde::{Deserialize, Serialize};

use crate::access::{AccessError, Registry};

/// The longest iSCSI name (RFC 7143 §4.2.7.1).
const MAX_NAME: usize = 223;

/// A secret kept in the configuration database; never printed.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A client's CHAP secrets: the one its initiators prove (CHAP name: the client's name), and
/// the one the gateway proves back when the initiator asks (mutual CHAP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chap {
    pub secret: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual: Option<Secret>,
}

/// An initiator allowed to log in as `client`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Initiator {
    pub client: String,
    /// Whether it must prove the client's CHAP secret; false only by an administrator's choice.
    pub chap: bool,
}

/// An iSCSI name in its compared form (lowercase), or why it is not one.
pub fn iscsi_name(name: &str) -> Result<String, AccessError> {
    let lower = name.to_ascii_lowercase();
    let typed = ["iqn.", "eui.", "naa."].iter().any(|p| lower.starts_with(p) && lower.len() > p.len());
    let chars = lower.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':'));
    if typed && chars && lower.len() <= MAX_NAME {
        Ok(lower)
    } else {
        Err(AccessError::BadInitiator(name.to_string()))
    }
}

impl Registry {
    /// Lets `initiator` log in as `client`, with CHAP or (`chap` false) on its name alone.
    pub fn allow_initiator(&mut self, client: &str, initiator: &str, chap: bool) -> Result<String, AccessError> {
        let name = iscsi_name(initiator)?;
        let c = self.clients.get(client).ok_or_else(|| AccessError::NoClient(client.to_string()))?;
        if chap && c.chap.is_none() {
            return Err(AccessError::NoChapSecret(client.to_string()));
        }
        match self.initiators.get(&name) {
            Some(i) if i.client != client => {
                Err(AccessError::InitiatorTaken { initiator: name, client: i.client.clone() })
            }
            _ => {
                self.initiators.insert(name.clone(), Initiator { client: client.to_string(), chap });
                Ok(name)
            }
        }
    }

    pub fn remove_initiator(&mut self, client: &str, initiator: &str) -> Result<(), AccessError> {
        let missing = || AccessError::NoInitiator { client: client.to_string(), initiator: initiator.to_string() };
        let name = iscsi_name(initiator).map_err(|_| missing())?;
        match self.initiators.get(&name) {
            Some(i) if i.client == client => {
                self.initiators.remove(&name);
                Ok(())
            }
            _ => Err(missing()),
        }
    }

    /// Gives a client new CHAP secrets (the old ones stop working at the next login).
    pub fn set_chap(&mut self, client: &str, chap: Chap) -> Result<(), AccessError> {
        let c = self.clients.get_mut(client).ok_or_else(|| AccessError::NoClient(client.to_string()))?;
        c.chap = Some(chap);
        Ok(())
    }

    /// Initiator names of a client.
    pub fn initiators_of(&self, client: &str) -> Vec<(String, Initiator)> {
        self.initiators.iter().filter(|(_, i)| i.client == client).map(|(n, i)| (n.clone(), i.clone())).collect()
    }

    /// An initiator's entry; names compare case-insensitively.
    pub fn initiator(&self, name: &str) -> Option<&Initiator> {
        self.initiators.get(&name.to_ascii_lowercase())
    }

    /// The client an initiator logs in as, given the CHAP name it proved (None: no CHAP).
    /// None when the initiator is unknown, or needs CHAP and did not prove the client's name.
    pub fn iscsi_client(&self, initiator: &str, chap_name: Option<&str>) -> Option<&str> {
        let i = self.initiator(initiator)?;
        match chap_name {
            Some(n) if n == i.client => Some(&i.client),
            None if !i.chap => Some(&i.client),
            _ => None,
        }
    }

    /// The CHAP secrets an initiator must prove under `chap_name`, if it may log in so.
    pub fn chap_of(&self, initiator: &str, chap_name: &str) -> Option<&Chap> {
        let client = &self.initiator(initiator)?.client;
        (client == chap_name).then(|| self.clients.get(client)?.chap.as_ref()).flatten()
    }

    /// The CHAP secrets of the client an initiator belongs to.
    pub fn chap_of_client(&self, initiator: &str) -> Option<&Chap> {
        self.clients.get(&self.initiator(initiator)?.client)?.chap.as_ref()
    }

    /// Whether an initiator must log in with CHAP: every one except those allowed without it,
    /// so that unknown names are asked for a secret they cannot have.
    pub fn chap_required(&self, initiator: &str) -> bool {
        self.initiator(initiator).is_none_or(|i| i.chap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Client;

    fn reg() -> Registry {
        let mut r = Registry::default();
        for c in ["a", "b"] {
            r.add_client(Client { name: c.into(), fingerprint: c.into(), created_unix_ms: 0, chap: None }).unwrap();
        }
        r
    }

    fn chap(s: &str) -> Chap {
        Chap { secret: Secret(s.into()), mutual: None }
    }

    #[test]
    fn names_are_checked_and_compared_lowercase() {
        assert_eq!(iscsi_name("IQN.2007-10.com.Github:x").unwrap(), "iqn.2007-10.com.github:x");
        assert!(iscsi_name("eui.02004567A425678D").is_ok());
        for bad in ["", "iqn.", "host1", "iqn.a b", "iqn.x_y", &format!("iqn.{}", "a".repeat(230))] {
            assert_eq!(iscsi_name(bad), Err(AccessError::BadInitiator(bad.to_string())), "{bad}");
        }
    }

    #[test]
    fn chap_is_required_unless_allowed_without() {
        let mut r = reg();
        assert_eq!(r.allow_initiator("a", "iqn.x:1", true), Err(AccessError::NoChapSecret("a".into())));
        r.set_chap("a", chap("s3cret-s3cret")).unwrap();
        r.allow_initiator("a", "IQN.x:1", true).unwrap();
        r.allow_initiator("b", "iqn.x:2", false).unwrap();
        assert!(r.chap_required("iqn.x:1") && !r.chap_required("iqn.x:2"));
        assert!(r.chap_required("iqn.unknown:3"), "unknown initiators are asked for a secret");
        assert_eq!(r.iscsi_client("iqn.x:1", None), None, "CHAP was not done");
        assert_eq!(r.iscsi_client("iqn.x:1", Some("b")), None, "another client's name");
        assert_eq!(r.iscsi_client("iqn.x:1", Some("a")), Some("a"));
        assert_eq!(r.iscsi_client("iqn.x:2", None), Some("b"));
        assert_eq!(r.chap_of("iqn.x:1", "a").map(|c| c.secret.0.as_str()), Some("s3cret-s3cret"));
        assert!(r.chap_of("iqn.x:1", "b").is_none() && r.chap_of("iqn.x:2", "b").is_none());
    }

    #[test]
    fn an_initiator_belongs_to_one_client_and_goes_with_it() {
        let mut r = reg();
        r.allow_initiator("a", "iqn.x:1", false).unwrap();
        let taken = AccessError::InitiatorTaken { initiator: "iqn.x:1".into(), client: "a".into() };
        assert_eq!(r.allow_initiator("b", "iqn.x:1", false), Err(taken));
        let missing = AccessError::NoInitiator { client: "b".into(), initiator: "iqn.x:1".into() };
        assert_eq!(r.remove_initiator("b", "iqn.x:1"), Err(missing));
        r.remove_client("a").unwrap();
        assert!(r.initiators.is_empty());
        assert!(r.iscsi_client("iqn.x:1", None).is_none());
    }

    #[test]
    fn secrets_never_print() {
        let c = chap("s3cret-s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
