//! Where a chunk generation lives on a target, and the identity its shares are bound to.
//!
//! A target must not learn which part of the volume an object holds. Generations written
//! by an owner with a claim epoch (all from 2^40 on, see `claim`) are named and labelled by a
//! keyed hash of (chunk, generation): the object is `<uuid>/d/<32 hex digits>`, and the
//! share header's chunk and generation fields carry the rest of that hash, so neither the
//! name nor the readable share label tells the chunk index or the write order. Older
//! generations keep their plain names (`<uuid>/chunks/<chunk>/<generation>`) until they are
//! rewritten.

use cleave_split::{ChunkId, Keyring, ShareKind};

use crate::meta::names;

/// Generations from here on are opaque.
pub const OPAQUE_FROM: u64 = 1 << 40;

const CONTEXT: &str = "cleave object names v1";

/// Where the opaque chunk objects of a volume live.
pub fn opaque_prefix(uuid: &str) -> String {
    format!("{uuid}/d/")
}

/// The object name and share identity of `chunk`'s `generation`.
pub fn chunk_object(keys: &Keyring, uuid: &str, volume: [u8; 16], chunk: u64, generation: u64) -> (String, ChunkId) {
    let plain = (names::chunk(uuid, chunk, generation), ChunkId { volume, kind: ShareKind::Data, chunk, generation });
    if generation < OPAQUE_FROM {
        return plain;
    }
    // The first key version names objects for the volume's whole life, so a re-key
    // does not rename what is already stored.
    let Some(key) = keys.versions().min().and_then(|v| keys.get(v)) else { return plain };
    let mut msg = [0u8; 16];
    msg[..8].copy_from_slice(&chunk.to_le_bytes());
    msg[8..].copy_from_slice(&generation.to_le_bytes());
    let h = key.integrity_mac(CONTEXT, &msg);
    let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let name = format!("{}{}", opaque_prefix(uuid), hex::encode(&h[..16]));
    (name, ChunkId { volume, kind: ShareKind::Data, chunk: word(16), generation: word(24) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_names_are_distinct_and_keyed() {
        let keys = Keyring::generate().unwrap();
        let v = [1u8; 16];
        let (a, ida) = chunk_object(&keys, "u", v, 5, OPAQUE_FROM + 1);
        let (b, idb) = chunk_object(&keys, "u", v, 5, OPAQUE_FROM + 2);
        let (c, _) = chunk_object(&keys, "u", v, 6, OPAQUE_FROM + 1);
        assert!(a != b && a != c && ida != idb);
        assert!(a.starts_with("u/d/") && !a.contains("000005"));
        let (other, _) = chunk_object(&Keyring::generate().unwrap(), "u", v, 5, OPAQUE_FROM + 1);
        assert_ne!(a, other, "names depend on the volume key");
        let (legacy, id) = chunk_object(&keys, "u", v, 5, 7);
        assert_eq!(legacy, names::chunk("u", 5, 7));
        assert_eq!((id.chunk, id.generation), (5, 7));
    }
}
