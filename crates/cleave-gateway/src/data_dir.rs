//! The data directory of a gateway (`cleave serve`, `cleave control`): master key, admin token, group key,
//! volume superblocks, default directory targets and caches.
//!
//! ```text
//! DIR/master.key        key file (mode 0600), or
//! DIR/master.sealed     the master key sealed under CLEAVE_PASSPHRASE (Argon2id)
//! DIR/admin.token       bearer token for the admin API (mode 0600)
//! DIR/config.redb       the configuration database (mode 0600; or etcd): clients, groups and grants,
//!                       users, group keys wrapped by the master key, and the sealed
//!                       superblock of each volume (also stored on its targets),
//!                       the last tasks (`history.rs`), and the webhook (`webhook.rs`)
//! DIR/admin.password    the first console user's password (mode 0600)
//! DIR/cluster.secret    authenticates auto-configuration packets and node access (mode 0600)
//! DIR/tls/              control's CA (ca.crt, ca.key 0600, ca.id)
//! DIR/targets/tI/       the default directory targets
//! DIR/cache/            volume caches
//! DIR/nbd.sock          NBD for the local administrator (mode 0600)
//! ```
//!
//! The directory is 0700 and everything in it 0600 (directories 0700): the servers set
//! umask 077 before creating anything, and [`DataDir::new`] closes older directories.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cleave_control::config::{ConfigStore, RedbStore};
use cleave_split::keys::{GroupKey, KdfParams, MasterKey, SealedMasterKey, WrappedKey};
use cleave_target::TargetUri;
use cleave_volume::Superblock;
use tracing::warn;
use zeroize::Zeroizing;

pub use crate::stored::Stored;

pub struct DataDir {
    pub root: PathBuf,
    /// The configuration database: `DIR/config.redb` by default.
    pub config: Arc<dyn ConfigStore>,
}

/// Files of data directories from before the configuration database, and their keys in it.
const LEGACY: [(&str, &str); 3] = [("access.json", "access"), ("users.json", "users"), ("groups.json", GROUP_KEYS)];
const GROUP_KEYS: &str = "group-keys";

fn volume_key(name: &str) -> String {
    format!("volume/{name}")
}

/// Writes a file readable only by its owner, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The cluster secret of the data directory `root`, created on first run (64 hex digits,
/// mode 0600). Needs nothing else of the directory, so it can be read before it is opened.
pub fn cluster_secret(root: &Path) -> Result<[u8; 32]> {
    let path = root.join("cluster.secret");
    if path.exists() {
        return read_secret(&path);
    }
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut secret = [0u8; 32];
    cleave_split::keys::fill_random(&mut secret)?;
    write_private(&path, format!("{}\n", hex::encode(secret)).as_bytes())?;
    Ok(secret)
}

/// A stable id kept in the file `path` (12 hex digits), made on first use.
pub fn stable_id(path: &Path) -> Result<String> {
    if let Ok(id) = fs::read_to_string(path) {
        return Ok(id.trim().to_string());
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    write_private(path, id.as_bytes())?;
    Ok(id)
}

/// Reads a cluster secret file: 64 hex digits.
pub fn read_secret(path: &Path) -> Result<[u8; 32]> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .with_context(|| format!("{}: expected 64 hex digits", path.display()))?;
    Ok(secret)
}

/// Creates the directory and its cache, and closes it to others.
fn prepare(root: &Path) -> Result<()> {
    fs::create_dir_all(root.join("cache")).with_context(|| format!("creating {}", root.display()))?;
    make_private(root)
}

/// Closes a data directory made by an older version or by hand: the directory 0700, and its
/// own files (keys, tokens, caches, certificates) 0600, subdirectories 0700. The directory's
/// mode alone keeps other users out of everything below it, so the many, encrypted target
/// objects are left as they are.
fn make_private(root: &Path) -> Result<()> {
    set_mode(root, 0o700)?;
    for dir in [root.to_path_buf(), root.join("cache"), root.join("tls")] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                set_mode(&entry.path(), 0o700)?;
            } else if kind.is_file() {
                set_mode(&entry.path(), 0o600)?;
            }
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let now = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if now != mode {
        warn!(path = %path.display(), from = format!("{now:o}"), to = format!("{mode:o}"), "making private");
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

/// Whether `s` has the form of a gateway's identity: `gateway-` and letters, digits or dashes.
pub fn is_gateway_id(s: &str) -> bool {
    s.len() <= 64
        && s.strip_prefix("gateway-")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `bytes` random bytes as hex: tokens, passwords, names.
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    cleave_split::keys::fill_random(&mut raw)?;
    Ok(hex::encode(raw))
}

impl DataDir {
    /// Opens the data directory `root` with its own configuration database (redb).
    pub fn new(root: PathBuf) -> Result<Self> {
        prepare(&root)?;
        let config = Arc::new(RedbStore::open(&root.join("config.redb"))?);
        Self::open(root, config)
    }

    /// Opens the data directory `root` with the configuration database `config` (etcd, when
    /// several gateways share it).
    pub fn with_config(root: PathBuf, config: Arc<dyn ConfigStore>) -> Result<Self> {
        prepare(&root)?;
        Self::open(root, config)
    }

    fn open(root: PathBuf, config: Arc<dyn ConfigStore>) -> Result<Self> {
        let data = DataDir { root, config };
        data.import_legacy_files()?;
        Ok(data)
    }

    /// Moves the JSON files of older data directories into the configuration database.
    fn import_legacy_files(&self) -> Result<()> {
        for (file, key) in LEGACY {
            let path = self.root.join(file);
            if let Ok(bytes) = fs::read(&path) {
                if self.config.get(key)?.is_none() {
                    self.config.put(key, &bytes)?;
                }
                fs::remove_file(&path)?;
            }
        }
        let dir = self.root.join("volumes");
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if self.config.get(&volume_key(name))?.is_none() {
                    self.config.put(&volume_key(name), &fs::read(&path)?)?;
                }
                fs::remove_file(&path)?;
            }
            let _ = fs::remove_dir(&dir);
        }
        Ok(())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// This gateway's identity in volume ownership claims (`DIR/gateway.id`), made on first use.
    pub fn gateway_id(&self) -> Result<String> {
        let path = self.root.join("gateway.id");
        match fs::read_to_string(&path) {
            Ok(id) if is_gateway_id(id.trim()) => Ok(id.trim().to_string()),
            Ok(id) => bail!("{}: {:?} is not a gateway identity (gateway-HEX)", path.display(), id.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = format!("gateway-{}", random_hex(8)?);
                write_private(&path, format!("{id}\n").as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Loads the master key, creating it on first run.
    pub fn master_key(&self) -> Result<MasterKey> {
        if let Some(key) = existing_master_key(&self.root)? {
            return Ok(key);
        }
        let key = MasterKey::generate()?;
        match passphrase_from_env() {
            Some(pass) => {
                let sealed = key.seal(&pass, KdfParams::default())?;
                write_private(&self.root.join(SEALED_KEY), &serde_json::to_vec_pretty(&sealed)?)?;
            }
            None => {
                let key_file = self.root.join(PLAIN_KEY);
                write_private(&key_file, key.to_key_file().as_bytes())?;
                warn!(
                    path = %key_file.display(),
                    "CLEAVE_PASSPHRASE is not set: the master key is stored unencrypted in a key file (mode 0600). \
                     Keep a copy somewhere safe: with the targets, it is all that `cleave recover` needs."
                );
            }
        }
        Ok(key)
    }

    /// The admin bearer token, created on first run.
    pub fn admin_token(&self) -> Result<String> {
        let path = self.root.join("admin.token");
        if let Ok(t) = fs::read_to_string(&path) {
            return Ok(t.trim().to_string());
        }
        let token = random_hex(32)?;
        write_private(&path, format!("{token}\n").as_bytes())?;
        Ok(token)
    }

    /// The cluster secret that authenticates auto-configuration packets and node
    /// access, created on first run (64 hex digits, mode 0600).
    pub fn cluster_secret(&self) -> Result<[u8; 32]> {
        cluster_secret(&self.root)
    }

    fn group_keys(&self) -> Result<BTreeMap<String, WrappedKey>> {
        match self.config.get_value(GROUP_KEYS)? {
            Some(b) => serde_json::from_slice(&b).context("reading the group keys"),
            None => Ok(BTreeMap::new()),
        }
    }

    /// A group's key, created (and wrapped by the master key) on first use.
    pub fn group_key(&self, master: &MasterKey, group: &str) -> Result<GroupKey> {
        let mut groups = self.group_keys()?;
        if let Some(w) = groups.get(group) {
            return master.unwrap_group(group, w).with_context(|| format!("unwrapping the key of group {group}"));
        }
        let key = GroupKey::generate()?;
        groups.insert(group.to_string(), master.wrap_group(group, &key)?);
        self.config.put(GROUP_KEYS, &serde_json::to_vec(&groups)?)?;
        Ok(key)
    }

    /// Destroys a group's key: superblock versions that only it could open become unreadable.
    pub fn remove_group_key(&self, group: &str) -> Result<()> {
        let mut groups = self.group_keys()?;
        if groups.remove(group).is_some() {
            self.config.put(GROUP_KEYS, &serde_json::to_vec(&groups)?)?;
        }
        Ok(())
    }

    /// Default directory targets `DIR/targets/t0..`, created as needed.
    pub fn default_targets(&self, n: usize) -> Result<Vec<String>> {
        (0..n)
            .map(|i| {
                let dir = self.root.join("targets").join(format!("t{i}"));
                fs::create_dir_all(&dir)?;
                let abs = dir.canonicalize()?;
                Ok(TargetUri::file(abs).to_string())
            })
            .collect()
    }

    pub fn save_volume(&self, sealed: &[u8], name: &str) -> Result<()> {
        self.config.put(&volume_key(name), sealed)?;
        Ok(())
    }

    /// [`DataDir::save_volume`] only while `guard` (this gateway's claim on the volume in an
    /// appliance) stands: a primary that lost the volume writes no superblock over the new
    /// primary's.
    pub fn save_owned_volume(&self, sealed: &[u8], name: &str, guard: &cleave_control::config::Guard) -> Result<()> {
        self.config.put_guarded(&volume_key(name), sealed, guard)?;
        Ok(())
    }

    /// Removes a volume's record if there is one (undoing a create).
    pub fn discard_volume(&self, name: &str) -> Result<()> {
        self.config.delete(&volume_key(name))?;
        Ok(())
    }

    pub fn remove_volume(&self, name: &str) -> Result<()> {
        if !self.config.delete(&volume_key(name))? {
            bail!("no volume {name:?} in the configuration database");
        }
        Ok(())
    }

    /// Every stored volume by name, each with its superblock or why it cannot be read:
    /// one bad record must not hide the others.
    pub fn stored_volumes(&self, master: &MasterKey) -> Result<Vec<(String, Result<Superblock>)>> {
        let prefix = volume_key("");
        let mut out = Vec::new();
        for entry in self.config.scan(&prefix)? {
            let name = entry.key.strip_prefix(&prefix).unwrap_or(&entry.key).to_string();
            let sb =
                Superblock::open(&entry.value, master).with_context(|| format!("reading the superblock of {name:?}"));
            out.push((name, sb));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every stored superblock that authenticates; the others are skipped with a warning.
    /// The names of the stored volumes.
    pub fn volume_names(&self) -> Result<Vec<String>> {
        let prefix = volume_key("");
        Ok(self.config.scan(&prefix)?.into_iter().map(|e| e.key[prefix.len()..].to_string()).collect())
    }

    pub fn load_volumes(&self, master: &MasterKey) -> Result<Vec<Superblock>> {
        let mut out = Vec::new();
        for (name, sb) in self.stored_volumes(master)? {
            match sb {
                Ok(sb) => out.push(sb),
                Err(e) => warn!(volume = %name, error = %format!("{e:#}"), "skipping a volume record"),
            }
        }
        Ok(out)
    }

    /// The stored superblock of `name`, if there is one.
    pub fn load_volume(&self, master: &MasterKey, name: &str) -> Result<Option<Superblock>> {
        match self.config.get_value(&volume_key(name))? {
            Some(bytes) => Ok(Some(Superblock::open(&bytes, master)?)),
            None => Ok(None),
        }
    }

    /// Whether `group` has a key yet (a rolled-back create removes the keys it made).
    pub fn has_group_key(&self, group: &str) -> Result<bool> {
        Ok(self.group_keys()?.contains_key(group))
    }
}

const PLAIN_KEY: &str = "master.key";
const SEALED_KEY: &str = "master.sealed";

fn passphrase_from_env() -> Option<Zeroizing<String>> {
    std::env::var("CLEAVE_PASSPHRASE").ok().filter(|p| !p.is_empty()).map(Zeroizing::new)
}

/// The master key of the data directory `root`, if it has one, in either form. Reads only
/// those files, so it works while a server holds the configuration database.
pub fn existing_master_key(root: &Path) -> Result<Option<MasterKey>> {
    for file in [SEALED_KEY, PLAIN_KEY] {
        let path = root.join(file);
        if path.exists() {
            return read_master_key(&path).map(Some);
        }
    }
    Ok(None)
}

/// Reads a master key from either form: a key file (`cleave-master-key-v1:` and hex), or a
/// key sealed under a passphrase (`master.sealed`), opened with CLEAVE_PASSPHRASE or, when
/// that is unset, a passphrase typed on the terminal.
pub fn read_master_key(path: &Path) -> Result<MasterKey> {
    let text = Zeroizing::new(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
    if !text.trim_start().starts_with('{') {
        return MasterKey::from_key_file(&text).with_context(|| format!("parsing the key file {}", path.display()));
    }
    let sealed: SealedMasterKey = serde_json::from_str(&text)
        .with_context(|| format!("{} is neither a key file nor a sealed master key", path.display()))?;
    let pass = match passphrase_from_env() {
        Some(p) => p,
        None => prompt_passphrase(path)?,
    };
    sealed.open(&pass).with_context(|| format!("opening {} (wrong passphrase?)", path.display()))
}

/// Asks for the passphrase on the terminal (stdin), without echo.
fn prompt_passphrase(path: &Path) -> Result<Zeroizing<String>> {
    use std::os::fd::AsRawFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd) } != 1 {
        bail!("{} is sealed under a passphrase: set CLEAVE_PASSPHRASE (no terminal to ask on)", path.display());
    }
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal; the pointers are valid for the calls.
    let echo_off = unsafe {
        libc::tcgetattr(fd, &mut saved) == 0 && {
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            quiet.c_lflag |= libc::ECHONL;
            libc::tcsetattr(fd, libc::TCSANOW, &quiet) == 0
        }
    };
    eprint!("passphrase for {}: ", path.display());
    let mut line = Zeroizing::new(String::new());
    let read = stdin.read_line(&mut line);
    if echo_off {
        // SAFETY: restores the settings read above on the same descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.context("reading the passphrase")?;
    let pass = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    if pass.is_empty() {
        bail!("no passphrase given");
    }
    Ok(pass)
}

/// `cleave key export`: writes the master key of `root` as a plain key file, mode 0600,
/// never over an existing file.
pub fn export_master_key(root: &Path, out: &Path) -> Result<()> {
    let key = existing_master_key(root)?.with_context(|| format!("no master key in {}", root.display()))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
    let written = f.write_all(key.to_key_file().as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(out);
        return Err(e).with_context(|| format!("writing {}", out.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_identity_is_made_once_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().to_path_buf()).unwrap();
        let id = data.gateway_id().unwrap();
        assert!(is_gateway_id(&id), "{id}");
        assert_eq!(data.gateway_id().unwrap(), id);
        for bad in ["", "gateway-", "node-1", "gateway-a/b", "gateway-a b", &format!("gateway-{}", "a".repeat(60))] {
            assert!(!is_gateway_id(bad), "{bad:?}");
        }
        fs::write(dir.path().join("gateway.id"), "../etc\n").unwrap();
        let e = data.gateway_id().unwrap_err().to_string();
        assert!(e.contains("not a gateway identity"), "{e}");
    }

    #[test]
    fn files_of_older_data_directories_move_into_the_configuration_database() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("volumes")).unwrap();
        fs::write(root.join("access.json"), b"{\"a\":1}").unwrap();
        fs::write(root.join("users.json"), b"{\"u\":2}").unwrap();
        fs::write(root.join("groups.json"), b"{}").unwrap();
        fs::write(root.join("volumes").join("demo.json"), b"sealed").unwrap();
        {
            let data = DataDir::new(root.clone()).unwrap();
            assert_eq!(data.config.get_value("access").unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
            assert_eq!(data.config.get_value("users").unwrap().as_deref(), Some(&b"{\"u\":2}"[..]));
            assert_eq!(data.config.get_value("volume/demo").unwrap().as_deref(), Some(&b"sealed"[..]));
            assert!(data.group_keys().unwrap().is_empty());
        }
        for gone in ["access.json", "users.json", "groups.json", "volumes"] {
            assert!(!root.join(gone).exists(), "{gone} is still there");
        }
        // Opened again, nothing is lost.
        let data = DataDir::new(root).unwrap();
        assert_eq!(data.config.scan("volume/").unwrap().len(), 1);
        data.remove_volume("demo").unwrap();
        assert!(data.remove_volume("demo").is_err());
    }
}
