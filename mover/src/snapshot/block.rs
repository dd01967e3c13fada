//! The EBS block: its fixed size, its SHA-256 and the base64 checksum AWS wants,
//! zero detection, and the volume-size arithmetic. Pure functions, no I/O.
//!
//! The block size is hard-coded on purpose: AWS's EBS direct APIs use 524288-byte
//! blocks for every snapshot, and a server that reports another `BlockSize` (moto
//! says 512) is wrong, not a reason to change what we send.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;

/// Bytes in one EBS snapshot block. AWS fixes it at 512 KiB for every snapshot;
/// we never take it from a response.
pub const BLOCK_SIZE: usize = 524_288;
/// [`BLOCK_SIZE`] as u64, for offsets.
pub const BLOCK_BYTES: u64 = BLOCK_SIZE as u64;
/// One GiB: EBS volume sizes are whole GiB.
pub const GIB: u64 = 1 << 30;
/// Blocks in one GiB of volume (2048).
pub const BLOCKS_PER_GIB: u64 = GIB / BLOCK_BYTES;
/// Largest volume a snapshot may describe: 64 TiB (StartSnapshot `VolumeSize`).
pub const MAX_VOLUME_GIB: u64 = 65_536;

/// SHA-256 of one full (padded) block.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// Hashes a full block (the caller pads a short last block first).
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The `Checksum` AWS wants: base64 of the raw digest.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses a base64 checksum as AWS returns it; `None` if it is not 32 bytes.
    pub fn from_base64(s: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        raw.try_into().ok().map(Self)
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..")
    }
}

/// What one block of a volume holds, as far as snapshots care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// All zero bytes (or a hole, or past the end of the source).
    Zero,
    /// Some non-zero byte; the hash of the padded block.
    Data(BlockHash),
}

/// True if every byte is zero. Compares 8 bytes at a time so a 512 KiB block
/// is checked at memory speed.
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    let words_zero = words
        .by_ref()
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0);
    words_zero && words.remainder().iter().all(|&b| b == 0)
}

/// The state of a full block buffer.
pub fn state_of(data: &[u8]) -> BlockState {
    if is_zero(data) {
        BlockState::Zero
    } else {
        BlockState::Data(BlockHash::of(data))
    }
}

/// The SHA-256 of an all-zero block, which children send for blocks that
/// became zero.
pub fn zero_block_hash() -> BlockHash {
    BlockHash::of(&[0u8; BLOCK_SIZE])
}

/// Volume size in GiB needed for `bytes` of data: rounded up, at least 1.
pub fn volume_gib_for(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

/// Blocks needed to hold `bytes` (the last one possibly partial).
pub fn blocks_for(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES)
}

/// The aggregated checksum CompleteSnapshot takes with method `LINEAR`: SHA-256
/// over the raw digests of the written blocks, in ascending block order.
pub fn linear_checksum<'a>(ordered_hashes: impl IntoIterator<Item = &'a BlockHash>) -> BlockHash {
    let mut h = Sha256::new();
    for d in ordered_hashes {
        h.update(d.0);
    }
    BlockHash(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_base64_of_sha256() {
        // sha256("abc"), a FIPS 180-2 test vector.
        let h = BlockHash::of(b"abc");
        assert_eq!(
            h.to_base64(),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(BlockHash::from_base64(&h.to_base64()), Some(h));
        assert_eq!(BlockHash::from_base64("AAAA"), None);
        assert_eq!(BlockHash::from_base64("not base64!"), None);
    }

    #[test]
    fn zero_detection_sees_every_byte() {
        let mut buf = vec![0u8; BLOCK_SIZE];
        assert!(is_zero(&buf));
        assert_eq!(state_of(&buf), BlockState::Zero);
        for pos in [0, 7, 8, BLOCK_SIZE / 2 + 3, BLOCK_SIZE - 1] {
            buf[pos] = 1;
            assert!(!is_zero(&buf), "byte {pos}");
            buf[pos] = 0;
        }
        // Lengths that are not a multiple of 8.
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 5]));
        assert!(is_zero(&[0, 0, 0]));
    }

    #[test]
    fn volume_sizes_round_up_to_whole_gib() {
        assert_eq!(volume_gib_for(0), 1);
        assert_eq!(volume_gib_for(1), 1);
        assert_eq!(volume_gib_for(GIB), 1);
        assert_eq!(volume_gib_for(GIB + 1), 2);
        assert_eq!(BLOCKS_PER_GIB, 2048);
        assert_eq!(blocks_for(BLOCK_BYTES + 1), 2);
        assert_eq!(blocks_for(0), 0);
    }

    #[test]
    fn linear_checksum_depends_on_order_and_content() {
        let a = BlockHash::of(b"a");
        let b = BlockHash::of(b"b");
        assert_ne!(linear_checksum([&a, &b]), linear_checksum([&b, &a]));
        let mut cat = Vec::new();
        cat.extend_from_slice(&a.0);
        cat.extend_from_slice(&b.0);
        assert_eq!(linear_checksum([&a, &b]), BlockHash::of(&cat));
    }
}
