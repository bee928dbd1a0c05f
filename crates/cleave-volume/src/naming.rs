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
    let Some(h) = keyed_hash(keys, CONTEXT, chunk, generation) else { return plain };
    let name = format!("{}{}", opaque_prefix(uuid), hex::encode(&h[..16]));
    (name, ChunkId { volume, kind: ShareKind::Data, chunk: word(&h, 16), generation: word(&h, 24) })
}

/// Where the chunk map's pages live.
pub fn page_prefix(uuid: &str) -> String {
    format!("{uuid}/p/")
}

/// The object name and share identity of version `version` of map page `page`: opaque
/// like chunk names, so a target cannot tell which part of the volume a page maps.
pub fn page_object(keys: &Keyring, uuid: &str, volume: [u8; 16], page: u64, version: u64) -> (String, ChunkId) {
    let h = keyed_hash(keys, PAGE_CONTEXT, page, version).unwrap_or_default();
    let name = format!("{}{}", page_prefix(uuid), hex::encode(&h[..16]));
    (name, ChunkId { volume, kind: ShareKind::MapPage, chunk: word(&h, 16), generation: word(&h, 24) })
}

const PAGE_CONTEXT: &str = "cleave map page names v1";

/// A keyed hash of two numbers under the volume's first key version: it names objects
/// for the volume's whole life, so a re-key does not rename what is already stored.
fn keyed_hash(keys: &Keyring, context: &str, a: u64, b: u64) -> Option<[u8; 32]> {
    let key = keys.versions().min().and_then(|v| keys.get(v))?;
    let mut msg = [0u8; 16];
    msg[..8].copy_from_slice(&a.to_le_bytes());
    msg[8..].copy_from_slice(&b.to_le_bytes());
    Some(key.integrity_mac(context, &msg))
}

fn word(h: &[u8; 32], i: usize) -> u64 {
    u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"))
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
        let (p, pid) = page_object(&keys, "u", v, 5, OPAQUE_FROM + 1);
        assert!(p.starts_with("u/p/") && p[4..] != a[4..] && pid.kind == ShareKind::MapPage);
        assert_ne!(p, page_object(&keys, "u", v, 5, OPAQUE_FROM + 2).0);
    }
}
