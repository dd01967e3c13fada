//! AWS's rules for EBS direct-API snapshots, enforced in our own code before a
//! request leaves, because moto (our test endpoint) accepts what AWS refuses and
//! a real refusal halfway through a push wastes the blocks already sent.
//!
//! The rules (EBS direct APIs reference): 524288-byte blocks; a base64 SHA-256
//! `Checksum` with `ChecksumAlgorithm` SHA256 on every PutSnapshotBlock;
//! `ParentSnapshotId` and `Encrypted` never together; a KMS key only with
//! encryption; `VolumeSize` 1-65536 GiB; block indexes inside the volume.

use super::block::{BLOCK_SIZE, BLOCKS_PER_GIB, BlockHash, MAX_VOLUME_GIB};

/// What StartSnapshot is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartRequest {
    /// Volume size in GiB.
    pub volume_gib: u64,
    /// The parent snapshot, for an incremental snapshot.
    pub parent: Option<String>,
    /// Encrypt the snapshot.
    pub encrypted: bool,
    /// The KMS key to encrypt with.
    pub kms_key_arn: Option<String>,
    /// The description.
    pub description: Option<String>,
    /// Makes a retried StartSnapshot return the same snapshot instead of a second one.
    pub client_token: Option<String>,
    /// Minutes of inactivity after which AWS cancels the pending snapshot.
    pub timeout_minutes: Option<u32>,
    /// The tags.
    pub tags: Vec<(String, String)>,
}

/// A request that AWS would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Encrypted was asked with a parent (a child inherits its encryption).
    #[error(
        "a snapshot with a parent ({parent}) cannot also set Encrypted: AWS refuses ParentSnapshotId \
         together with Encrypted (a child inherits its parent's encryption)"
    )]
    ParentWithEncrypted {
        /// The parent.
        parent: String,
    },
    /// A KMS key without encryption.
    #[error("a KMS key ({key}) needs Encrypted")]
    KmsWithoutEncryption {
        /// The key.
        key: String,
    },
    /// A volume size AWS does not take.
    #[error("volume size {gib} GiB is outside EBS's 1-{MAX_VOLUME_GIB} GiB")]
    VolumeSize {
        /// The size.
        gib: u64,
    },
    /// A block past the volume's end.
    #[error("block {index} is outside a {volume_gib} GiB volume ({blocks} blocks)")]
    BlockOutOfRange {
        /// The block.
        index: u64,
        /// The volume's size.
        volume_gib: u64,
        /// Blocks the volume has.
        blocks: u64,
    },
    /// A block that is not 512 KiB.
    #[error("block {index} is {len} bytes; EBS blocks are always {BLOCK_SIZE}")]
    BlockLength {
        /// The block.
        index: u64,
        /// Its length.
        len: usize,
    },
    /// A block does not match its checksum.
    #[error("block {index}: checksum {got} does not match the data (SHA-256 {want})")]
    Checksum {
        /// The block.
        index: u64,
        /// The checksum of the bytes.
        got: String,
        /// The checksum given.
        want: String,
    },
    /// A checksum algorithm other than SHA256.
    #[error("block {index}: checksum algorithm {got:?}, expected SHA256")]
    ChecksumAlgorithm {
        /// The block.
        index: u64,
        /// The algorithm named.
        got: Option<String>,
    },
}

/// Checks a StartSnapshot request.
pub fn check_start(req: &StartRequest) -> Result<(), RuleError> {
    if let Some(parent) = &req.parent
        && req.encrypted
    {
        return Err(RuleError::ParentWithEncrypted {
            parent: parent.clone(),
        });
    }
    if let Some(key) = &req.kms_key_arn
        && !req.encrypted
    {
        return Err(RuleError::KmsWithoutEncryption { key: key.clone() });
    }
    if req.volume_gib == 0 || req.volume_gib > MAX_VOLUME_GIB {
        return Err(RuleError::VolumeSize {
            gib: req.volume_gib,
        });
    }
    Ok(())
}

/// Checks a block about to be put (or just fetched): index inside the volume and
/// exactly one full block of data.
pub fn check_block(index: u64, len: usize, volume_gib: u64) -> Result<(), RuleError> {
    let blocks = volume_gib * BLOCKS_PER_GIB;
    if index >= blocks {
        return Err(RuleError::BlockOutOfRange {
            index,
            volume_gib,
            blocks,
        });
    }
    if len != BLOCK_SIZE {
        return Err(RuleError::BlockLength { index, len });
    }
    Ok(())
}

/// Verifies a block's data against the checksum that came with it.
pub fn verify_checksum(
    index: u64,
    data: &[u8],
    checksum: &str,
    algorithm: Option<&str>,
) -> Result<BlockHash, RuleError> {
    if algorithm != Some("SHA256") {
        return Err(RuleError::ChecksumAlgorithm {
            index,
            got: algorithm.map(str::to_owned),
        });
    }
    let actual = BlockHash::of(data);
    if BlockHash::from_base64(checksum) != Some(actual) {
        return Err(RuleError::Checksum {
            index,
            got: checksum.to_owned(),
            want: actual.to_base64(),
        });
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(gib: u64) -> StartRequest {
        StartRequest {
            volume_gib: gib,
            ..Default::default()
        }
    }

    #[test]
    fn parent_with_encrypted_is_refused() {
        let r = StartRequest {
            parent: Some("snap-1".into()),
            encrypted: true,
            ..req(1)
        };
        assert_eq!(
            check_start(&r),
            Err(RuleError::ParentWithEncrypted {
                parent: "snap-1".into()
            })
        );
        // Each alone is fine.
        assert!(
            check_start(&StartRequest {
                encrypted: false,
                ..r.clone()
            })
            .is_ok()
        );
        assert!(check_start(&StartRequest { parent: None, ..r }).is_ok());
    }

    #[test]
    fn kms_needs_encryption_and_sizes_are_bounded() {
        let r = StartRequest {
            kms_key_arn: Some("arn:aws:kms:k".into()),
            ..req(1)
        };
        assert!(matches!(
            check_start(&r),
            Err(RuleError::KmsWithoutEncryption { .. })
        ));
        assert!(
            check_start(&StartRequest {
                encrypted: true,
                ..r
            })
            .is_ok()
        );
        assert_eq!(check_start(&req(0)), Err(RuleError::VolumeSize { gib: 0 }));
        assert!(check_start(&req(65_536)).is_ok());
        assert_eq!(
            check_start(&req(65_537)),
            Err(RuleError::VolumeSize { gib: 65_537 })
        );
    }

    #[test]
    fn blocks_are_full_size_and_inside_the_volume() {
        assert!(check_block(2047, BLOCK_SIZE, 1).is_ok());
        assert!(matches!(
            check_block(2048, BLOCK_SIZE, 1),
            Err(RuleError::BlockOutOfRange { .. })
        ));
        // moto's reported 512-byte block size must never leak into what we send.
        assert_eq!(
            check_block(0, 512, 1),
            Err(RuleError::BlockLength { index: 0, len: 512 })
        );
    }

    #[test]
    fn checksums_are_verified() {
        let data = vec![7u8; BLOCK_SIZE];
        let good = BlockHash::of(&data).to_base64();
        assert_eq!(
            verify_checksum(3, &data, &good, Some("SHA256")),
            Ok(BlockHash::of(&data))
        );
        let bad = BlockHash::of(b"other").to_base64();
        assert!(matches!(
            verify_checksum(3, &data, &bad, Some("SHA256")),
            Err(RuleError::Checksum { index: 3, .. })
        ));
        assert!(matches!(
            verify_checksum(3, &data, &good, None),
            Err(RuleError::ChecksumAlgorithm { .. })
        ));
    }
}
