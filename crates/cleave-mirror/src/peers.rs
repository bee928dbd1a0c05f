//! What a gateway knows of each peer, by the address of its mirror listener
//! (`DIR/mirror/peers/*.json`, private): its id, the heartbeat key of the last session,
//! the credentials to reach it, and the client name it authenticates to us with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::control::PeerCredentials;
use crate::error::Result;
use crate::heartbeat::PeerId;
use crate::link::Link;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerFile {
    pub addr: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub heartbeat_key: Option<String>,
    #[serde(default)]
    pub credentials: Option<PeerCredentials>,
    /// The registered client name of the peer's certificate, here.
    #[serde(default)]
    pub client: Option<String>,
}

impl PeerFile {
    pub fn id(&self) -> Option<PeerId> {
        parse_id(self.id.as_deref()?)
    }
    pub fn key(&self) -> Option<[u8; 32]> {
        hex::decode(self.heartbeat_key.as_deref()?).ok()?.try_into().ok()
    }
}

pub fn parse_id(s: &str) -> Option<PeerId> {
    hex::decode(s).ok()?.try_into().ok()
}

/// The peers, and the open link to each.
pub struct Peers {
    dir: PathBuf,
    files: Mutex<HashMap<String, PeerFile>>,
    links: Mutex<HashMap<String, Arc<Link>>>,
}

fn file_name(addr: &str) -> String {
    addr.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect::<String>() + ".json"
}

impl Peers {
    pub fn load(dir: &Path) -> Result<Peers> {
        crate::files::private_dir(dir)?;
        let mut files = HashMap::new();
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(f) = serde_json::from_slice::<PeerFile>(&std::fs::read(&p)?) {
                    files.insert(f.addr.clone(), f);
                }
            }
        }
        Ok(Peers { dir: dir.to_path_buf(), files: Mutex::new(files), links: Mutex::default() })
    }

    pub fn get(&self, addr: &str) -> Option<PeerFile> {
        self.files.lock().expect("not poisoned").get(addr).cloned()
    }

    pub fn all(&self) -> Vec<PeerFile> {
        self.files.lock().expect("not poisoned").values().cloned().collect()
    }

    /// Changes (or makes) a peer's file and stores it.
    pub fn update(&self, addr: &str, f: impl FnOnce(&mut PeerFile)) -> Result<PeerFile> {
        let mut files = self.files.lock().expect("not poisoned");
        let entry =
            files.entry(addr.to_string()).or_insert_with(|| PeerFile { addr: addr.to_string(), ..Default::default() });
        f(entry);
        let b = serde_json::to_vec_pretty(entry).map_err(|e| crate::error::MirrorError::Local(e.to_string()))?;
        crate::files::write_atomic(&self.dir.join(file_name(addr)), &b)?;
        Ok(entry.clone())
    }

    /// The peer's address whose certificate names `client`.
    pub fn by_client(&self, client: &str) -> Option<PeerFile> {
        self.files.lock().expect("not poisoned").values().find(|f| f.client.as_deref() == Some(client)).cloned()
    }

    pub fn link(&self, addr: &str) -> Option<Arc<Link>> {
        let mut links = self.links.lock().expect("not poisoned");
        match links.get(addr) {
            Some(l) if l.is_closed() => {
                links.remove(addr);
                None
            }
            other => other.cloned(),
        }
    }

    pub fn set_link(&self, addr: &str, link: Arc<Link>) {
        self.links.lock().expect("not poisoned").insert(addr.to_string(), link);
    }

    pub fn drop_link(&self, addr: &str) {
        if let Some(l) = self.links.lock().expect("not poisoned").remove(addr) {
            l.close();
        }
    }
}
