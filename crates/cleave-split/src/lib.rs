//! `cleave-split`: the transform every chunk passes through, and the keys it needs.
//!
//! A chunk generation is encrypted under a fresh per-write key and split into N
//! shares, any M of which rebuild it; each share carries a plaintext label and
//! its own integrity tags. See `docs/cryptography.md` for the construction.
//!
//! - [`codec`]: [`Codec::encode`] and [`Codec::decode`], with a [`DecodeReport`] naming bad shares.
//! - [`format`]: the versioned share format and [`read_label`], which needs no key.
//! - [`keys`]: master key, group keys, volume key slots, key versions, HKDF subkeys.
//! - [`erasure`]: Reed-Solomon parity and rebuilding, in cache-sized segments.
//! - [`shamir`]: M-of-N secret sharing of the per-write key over GF(2^8).
//!
//! The crate does no I/O; randomness comes from the OS through aws-lc-rs.

pub mod codec;
pub mod erasure;
pub mod format;
pub mod keys;
pub mod shamir;

pub use codec::{
    constant_time_eq, BadShare, Codec, DecodeError, DecodeReport, Decoded, EncodeError, ShareFault, Verify,
};
pub use format::{read_label, ChunkId, LabelError, ShareKind, ShareLabel, HEADER_LEN, TAG_LEN};
pub use keys::{
    GroupKey, KeyError, KeySlot, Keyring, MasterKey, SealedMasterKey, VolumeKey, VolumeKeySlots, WrappedKey,
};

/// Largest M or N supported.
pub const MAX_SHARES: usize = 64;
/// Largest chunk accepted by the codec (bounds allocation on decode of untrusted shares).
pub const MAX_CHUNK_LEN: usize = 64 << 20;
