//! The key hierarchy.
//!
//! ```text
//! passphrase --Argon2id--> KEK --wraps--> master key        (or a key file holds the master key)
//! master key --wraps--> group key (one per community of interest)
//! group key  --wraps--> key slot = every version of one volume's key (one slot per group with access)
//! volume key version --HKDF--> data, integrity and metadata subkeys
//! ```
//! Wrapping is AES-256-GCM with a random nonce and the wrapped key's context as
//! associated data, so a wrapped blob cannot be moved to another group or volume.
//! Removing a volume's last key slot leaves no way to its keys: crypto-erase.
//! Secrets are zeroized on drop and their `Debug` output is redacted.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;

/// Errors from key handling. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("wrong passphrase or damaged sealed key")]
    WrongPassphrase,
    #[error("key does not unwrap: wrong key, wrong context or damaged blob ({0})")]
    Unwrap(&'static str),
    #[error("malformed key file: {0}")]
    Malformed(&'static str),
    #[error("no key slot for group {0:?}")]
    NoSlot(String),
    #[error("volume has no key slots left: its data is crypto-erased")]
    Erased,
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("randomness unavailable")]
    Random,
}

pub(crate) fn random<const L: usize>() -> Result<[u8; L], KeyError> {
    let mut b = [0u8; L];
    SystemRandom::new().fill(&mut b).map_err(|_| KeyError::Random)?;
    Ok(b)
}

/// Fills `buf` from the operating system's generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    SystemRandom::new().fill(buf).map_err(|_| KeyError::Random)
}

/// 32 secret bytes: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<[u8; KEY_LEN]>);

impl Secret {
    pub fn random() -> Result<Self, KeyError> {
        Ok(Secret(Zeroizing::new(random()?)))
    }
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Secret(Zeroizing::new(b))
    }
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// HKDF-SHA256 of `ikm` with `info`, 32 bytes out.
pub(crate) fn hkdf32(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> [u8; KEY_LEN] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            KEY_LEN
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = [0u8; KEY_LEN];
    prk.expand(info, Len32).and_then(|okm| okm.fill(&mut out)).expect("HKDF-SHA256 expand of 32 bytes cannot fail");
    out
}

/// A key wrapped (encrypted and authenticated) under another key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub ciphertext: Vec<u8>,
}

fn aead(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

fn wrap(kek: &[u8; KEY_LEN], context: &[u8], plaintext: &[u8]) -> Result<WrappedKey, KeyError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let mut buf = plaintext.to_vec();
    aead(kek)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf)
        .map_err(|_| KeyError::Unwrap("seal"))?;
    Ok(WrappedKey { nonce: nonce.to_vec(), ciphertext: buf })
}

fn unwrap(kek: &[u8; KEY_LEN], context: &[u8], w: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let nonce: [u8; NONCE_LEN] = w.nonce.as_slice().try_into().map_err(|_| KeyError::Unwrap("nonce length"))?;
    let mut buf = Zeroizing::new(w.ciphertext.clone());
    let len = aead(kek)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf)
        .map_err(|_| KeyError::Unwrap("authentication failed"))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

fn unwrap_secret(kek: &[u8; KEY_LEN], context: &[u8], w: &WrappedKey) -> Result<Secret, KeyError> {
    let plain = unwrap(kek, context, w)?;
    let bytes: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| KeyError::Unwrap("key length"))?;
    Ok(Secret::from_bytes(bytes))
}

/// The root of the hierarchy. Kept in a key file or sealed under a passphrase.
#[derive(Clone, Debug)]
pub struct MasterKey(Secret);

const KEY_FILE_PREFIX: &str = "cleave-master-key-v1:";

impl MasterKey {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(MasterKey(Secret::random()?))
    }

    /// The text of a key file: a versioned prefix and the key in hex.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{KEY_FILE_PREFIX}{}\n", hex::encode(self.0.expose())))
    }

    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let hexkey = text
            .trim()
            .strip_prefix(KEY_FILE_PREFIX)
            .ok_or(KeyError::Malformed("missing cleave-master-key-v1 prefix"))?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(hexkey, bytes.as_mut()).map_err(|_| KeyError::Malformed("key is not 64 hex digits"))?;
        Ok(MasterKey(Secret::from_bytes(*bytes)))
    }

    /// Seals the master key under a passphrase with Argon2id.
    pub fn seal(&self, passphrase: &str, params: KdfParams) -> Result<SealedMasterKey, KeyError> {
        let salt: [u8; 16] = random()?;
        let kek = params.derive(passphrase, &salt)?;
        let wrapped = wrap(&kek, b"cleave master key", self.0.expose())?;
        drop(kek);
        Ok(SealedMasterKey { kdf: "argon2id".into(), params, salt: salt.to_vec(), wrapped })
    }

    /// Encrypts and authenticates `plaintext` under a key derived for `purpose` (which is
    /// also the associated data): for records such as the superblock that no target may read.
    pub fn seal_bytes(&self, purpose: &str, plaintext: &[u8]) -> Result<WrappedKey, KeyError> {
        wrap(self.derive(purpose).expose(), purpose.as_bytes(), plaintext)
    }

    /// Opens what [`MasterKey::seal_bytes`] sealed for the same `purpose`.
    pub fn open_bytes(&self, purpose: &str, sealed: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        unwrap(self.derive(purpose).expose(), purpose.as_bytes(), sealed)
    }

    pub fn wrap_group(&self, group: &str, key: &GroupKey) -> Result<WrappedKey, KeyError> {
        wrap(self.0.expose(), &group_context(group), key.0.expose())
    }

    pub fn unwrap_group(&self, group: &str, wrapped: &WrappedKey) -> Result<GroupKey, KeyError> {
        unwrap_secret(self.0.expose(), &group_context(group), wrapped).map(GroupKey)
    }

    /// A secret for another purpose (for example a token-signing key), bound to `purpose`.
    pub fn derive(&self, purpose: &str) -> Secret {
        Secret::from_bytes(hkdf32(b"cleave master", self.0.expose(), &[purpose.as_bytes()]))
    }
}

fn group_context(group: &str) -> Vec<u8> {
    [b"cleave group key\0".as_slice(), group.as_bytes()].concat()
}

/// Argon2id cost parameters, stored beside the sealed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended Argon2id setting (64 MiB, 3 passes).
    fn default() -> Self {
        KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

impl KdfParams {
    /// The sealing key, wiped from memory when dropped.
    fn derive(&self, passphrase: &str, salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// The master key sealed under a passphrase: safe to store on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMasterKey {
    pub kdf: String,
    pub params: KdfParams,
    #[serde(with = "hex::serde")]
    pub salt: Vec<u8>,
    pub wrapped: WrappedKey,
}

impl SealedMasterKey {
    pub fn open(&self, passphrase: &str) -> Result<MasterKey, KeyError> {
        if self.kdf != "argon2id" {
            return Err(KeyError::Malformed("unknown key derivation function"));
        }
        let kek = self.params.derive(passphrase, &self.salt)?;
        unwrap_secret(&kek, b"cleave master key", &self.wrapped).map_err(|_| KeyError::WrongPassphrase).map(MasterKey)
    }
}

/// The key of one community of interest (a group of clients).
#[derive(Clone, Debug)]
pub struct GroupKey(Secret);

impl GroupKey {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(GroupKey(Secret::random()?))
    }
}

/// One version of a volume's key, with its HKDF subkeys.
#[derive(Clone)]
pub struct VolumeKey {
    pub(crate) id: u32,
    root: Secret,
    pub(crate) data: Secret,
    pub(crate) integrity: Secret,
    pub(crate) metadata: Secret,
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl VolumeKey {
    pub fn new(id: u32, root: Secret) -> Self {
        let sub =
            |label: &[u8]| Secret::from_bytes(hkdf32(b"cleave volume key", root.expose(), &[label, &id.to_le_bytes()]));
        VolumeKey { data: sub(b"data"), integrity: sub(b"integrity"), metadata: sub(b"metadata"), id, root }
    }
    pub fn generate(id: u32) -> Result<Self, KeyError> {
        Ok(Self::new(id, Secret::random()?))
    }
    /// The key version; shares record it as their key id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// A keyed BLAKE3 MAC of `msg` under this version's integrity subkey, separated by
    /// `context` (for small authenticated records such as target labels).
    pub fn integrity_mac(&self, context: &str, msg: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key(context, self.integrity.expose());
        *blake3::keyed_hash(&key, msg).as_bytes()
    }
}

/// Every version of one volume's key, unlocked. Encoding uses the newest.
#[derive(Clone, Debug)]
pub struct Keyring {
    versions: BTreeMap<u32, VolumeKey>,
}

impl Keyring {
    /// A keyring with one fresh key, version 1.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self::from_key(VolumeKey::generate(1)?))
    }
    pub fn from_key(key: VolumeKey) -> Self {
        Keyring { versions: BTreeMap::from([(key.id, key)]) }
    }
    /// The key new writes use.
    pub fn current(&self) -> &VolumeKey {
        self.versions.values().next_back().expect("a keyring is never empty")
    }
    pub fn get(&self, id: u32) -> Option<&VolumeKey> {
        self.versions.get(&id)
    }
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.versions.keys().copied()
    }
    /// Re-key: adds a new version that new writes use. Old versions stay for reading.
    pub fn rotate(&mut self) -> Result<u32, KeyError> {
        let id = self.current().id + 1;
        self.versions.insert(id, VolumeKey::generate(id)?);
        Ok(id)
    }
    /// Forgets old versions once nothing is encrypted under them any more.
    pub fn retire(&mut self, id: u32) {
        if id != self.current().id {
            self.versions.remove(&id);
        }
    }

    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.versions.len() * 36));
        for k in self.versions.values() {
            out.extend_from_slice(&k.id.to_le_bytes());
            out.extend_from_slice(k.root.expose());
        }
        out
    }

    fn from_bytes(b: &[u8]) -> Result<Self, KeyError> {
        if b.is_empty() || !b.len().is_multiple_of(36) {
            return Err(KeyError::Malformed("key slot content"));
        }
        let versions = b
            .chunks_exact(36)
            .map(|c| {
                let id = u32::from_le_bytes(c[..4].try_into().expect("4 bytes"));
                let root: [u8; KEY_LEN] = c[4..].try_into().expect("32 bytes");
                (id, VolumeKey::new(id, Secret::from_bytes(root)))
            })
            .collect();
        Ok(Keyring { versions })
    }
}

/// One group's wrapped copy of a volume's keyring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlot {
    pub group: String,
    pub wrapped: WrappedKey,
}

/// The key slots of one volume: what is stored, never the keys themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeKeySlots {
    #[serde(with = "hex::serde")]
    pub volume: Vec<u8>,
    pub slots: Vec<KeySlot>,
}

fn slot_context(volume: &[u8], group: &str) -> Vec<u8> {
    [b"cleave volume key slot\0".as_slice(), volume, group.as_bytes()].concat()
}

impl VolumeKeySlots {
    pub fn new(volume: [u8; 16]) -> Self {
        VolumeKeySlots { volume: volume.to_vec(), slots: Vec::new() }
    }

    /// Gives `group` access (or refreshes its slot after a re-key).
    pub fn grant(&mut self, keyring: &Keyring, group: &str, group_key: &GroupKey) -> Result<(), KeyError> {
        let wrapped = wrap(group_key.0.expose(), &slot_context(&self.volume, group), &keyring.to_bytes())?;
        self.slots.retain(|s| s.group != group);
        self.slots.push(KeySlot { group: group.to_string(), wrapped });
        Ok(())
    }

    /// Removes `group`'s slot. Returns true when no slot is left: the volume is crypto-erased.
    pub fn revoke(&mut self, group: &str) -> bool {
        self.slots.retain(|s| s.group != group);
        self.slots.is_empty()
    }

    pub fn unlock(&self, group: &str, group_key: &GroupKey) -> Result<Keyring, KeyError> {
        if self.slots.is_empty() {
            return Err(KeyError::Erased);
        }
        let slot = self.slots.iter().find(|s| s.group == group).ok_or_else(|| KeyError::NoSlot(group.to_string()))?;
        let plain = unwrap(group_key.0.expose(), &slot_context(&self.volume, group), &slot.wrapped)?;
        Keyring::from_bytes(&plain)
    }

    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.group.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams { m_cost_kib: 256, t_cost: 1, p_cost: 1 }
    }

    #[test]
    fn passphrase_seal_round_trip_and_wrong_passphrase() {
        let mk = MasterKey::generate().unwrap();
        let sealed = mk.seal("correct horse", cheap()).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains(&hex::encode(mk.0.expose())), "sealed file must not hold the key");
        let back: SealedMasterKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back.open("correct horse").unwrap().0, mk.0);
        assert!(matches!(back.open("wrong"), Err(KeyError::WrongPassphrase)));
    }

    #[test]
    fn key_file_round_trip_and_garbage() {
        let mk = MasterKey::generate().unwrap();
        let text = mk.to_key_file();
        assert_eq!(MasterKey::from_key_file(&text).unwrap().0, mk.0);
        assert!(MasterKey::from_key_file("cleave-master-key-v1:zz").is_err());
        assert!(MasterKey::from_key_file("").is_err());
    }

    #[test]
    fn group_key_is_bound_to_its_name() {
        let mk = MasterKey::generate().unwrap();
        let gk = GroupKey::generate().unwrap();
        let w = mk.wrap_group("ops", &gk).unwrap();
        assert_eq!(mk.unwrap_group("ops", &w).unwrap().0, gk.0);
        assert!(mk.unwrap_group("other", &w).is_err());
        let other = MasterKey::generate().unwrap();
        assert!(other.unwrap_group("ops", &w).is_err());
    }

    #[test]
    fn slots_rekey_and_crypto_erase() {
        let (ga, gb) = (GroupKey::generate().unwrap(), GroupKey::generate().unwrap());
        let mut ring = Keyring::generate().unwrap();
        let mut slots = VolumeKeySlots::new([7; 16]);
        slots.grant(&ring, "a", &ga).unwrap();
        slots.grant(&ring, "b", &gb).unwrap();
        assert!(matches!(slots.unlock("a", &gb), Err(KeyError::Unwrap(_))));
        assert_eq!(slots.unlock("b", &gb).unwrap().current().data, ring.current().data);

        let v2 = ring.rotate().unwrap();
        assert_eq!(v2, 2);
        slots.grant(&ring, "a", &ga).unwrap();
        let unlocked = slots.unlock("a", &ga).unwrap();
        assert_eq!(unlocked.current().id(), 2);
        assert!(unlocked.get(1).is_some(), "old versions stay readable");

        // A slot moved to another volume does not open.
        let mut moved = VolumeKeySlots::new([8; 16]);
        moved.slots = slots.slots.clone();
        assert!(moved.unlock("a", &ga).is_err());

        assert!(!slots.revoke("a"));
        assert!(slots.revoke("b"), "last slot gone");
        assert!(matches!(slots.unlock("a", &ga), Err(KeyError::Erased)));
    }

    #[test]
    fn debug_output_is_redacted() {
        let ring = Keyring::generate().unwrap();
        let text = format!("{ring:?} {:?} {:?}", MasterKey::generate().unwrap(), GroupKey::generate().unwrap());
        let secret_hex = hex::encode(ring.current().root.expose());
        assert!(!text.contains(&secret_hex));
        assert!(!text.contains(&format!("{:?}", ring.current().root.expose())));
    }
}
