//! What a profile means on Amazon EBS: volume type, IOPS rule, throughput,
//! encryption; and AWS's limits for each type, enforced here so a request AWS
//! would refuse (or a moto server would wrongly accept) is refused by us first,
//! with a message that says which limit.
//!
//! Limits are from the EC2 API reference (CreateVolume/ModifyVolume `Iops`,
//! `Throughput`, `Size`), re-checked 2026-11: gp3 3,000-16,000 IOPS and
//! 125-1,000 MiB/s; io1 100-64,000 IOPS at most 50 per GiB; io2 100-256,000 IOPS
//! at most 1,000 per GiB. AWS raises limits from time to time; the table is data,
//! one place to edit.

use crate::size::ByteSize;
use serde::{Deserialize, Serialize};
use std::fmt;

/// EBS volume types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EbsVolumeType {
    Gp3,
    Gp2,
    Io1,
    Io2,
    St1,
    Sc1,
    Standard,
}

impl EbsVolumeType {
    /// The name AWS uses (`VolumeType`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gp3 => "gp3",
            Self::Gp2 => "gp2",
            Self::Io1 => "io1",
            Self::Io2 => "io2",
            Self::St1 => "st1",
            Self::Sc1 => "sc1",
            Self::Standard => "standard",
        }
    }

    /// AWS's limits for this type.
    pub fn limits(self) -> TypeLimits {
        const GP3_IOPS: IopsLimits = IopsLimits {
            min: 3_000,
            max: 16_000,
            max_per_gib: 500,
            required: false,
            // gp3 always gets its 3,000 IOPS baseline, whatever the size.
            baseline: Some(3_000),
        };
        match self {
            Self::Gp3 => TypeLimits {
                min_gib: 1,
                max_gib: 16_384,
                iops: Some(GP3_IOPS),
                throughput: Some(ThroughputLimits {
                    min: 125,
                    max: 1_000,
                    // At most 0.25 MiB/s per provisioned IOPS.
                    max_per_kiops: 250,
                    baseline: 125,
                }),
            },
            Self::Io1 => TypeLimits {
                min_gib: 4,
                max_gib: 16_384,
                iops: Some(IopsLimits {
                    min: 100,
                    max: 64_000,
                    max_per_gib: 50,
                    required: true,
                    baseline: None,
                }),
                throughput: None,
            },
            Self::Io2 => TypeLimits {
                min_gib: 4,
                max_gib: 65_536,
                iops: Some(IopsLimits {
                    min: 100,
                    max: 256_000,
                    max_per_gib: 1_000,
                    required: true,
                    baseline: None,
                }),
                throughput: None,
            },
            Self::Gp2 => TypeLimits {
                min_gib: 1,
                max_gib: 16_384,
                iops: None,
                throughput: None,
            },
            Self::St1 | Self::Sc1 => TypeLimits {
                min_gib: 125,
                max_gib: 16_384,
                iops: None,
                throughput: None,
            },
            Self::Standard => TypeLimits {
                min_gib: 1,
                max_gib: 1_024,
                iops: None,
                throughput: None,
            },
        }
    }
}

impl fmt::Display for EbsVolumeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// AWS limits of one volume type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeLimits {
    pub min_gib: u64,
    pub max_gib: u64,
    /// `None`: the type takes no `Iops` parameter.
    pub iops: Option<IopsLimits>,
    /// `None`: the type takes no `Throughput` parameter.
    pub throughput: Option<ThroughputLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IopsLimits {
    pub min: u32,
    pub max: u32,
    pub max_per_gib: u32,
    /// io1/io2 need `Iops` in CreateVolume.
    pub required: bool,
    /// IOPS a volume gets without asking, allowed whatever the size.
    pub baseline: Option<u32>,
}

impl IopsLimits {
    /// Highest IOPS allowed at `size_gib`.
    pub fn max_at(&self, size_gib: u64) -> u32 {
        let by_size =
            u32::try_from(size_gib.saturating_mul(u64::from(self.max_per_gib))).unwrap_or(u32::MAX);
        by_size.max(self.baseline.unwrap_or(0)).min(self.max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThroughputLimits {
    pub min: u32,
    pub max: u32,
    /// MiB/s allowed per 1,000 IOPS.
    pub max_per_kiops: u32,
    pub baseline: u32,
}

/// How a profile sets IOPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IopsRule {
    /// Exactly this many; refused if outside the type's limits.
    Fixed(u32),
    /// `per_gib` x size, clamped to the type's limits and to the optional
    /// `min`/`max` (FlockerProfiles' gold: 30 per GiB).
    PerGib {
        per_gib: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<u32>,
    },
}

/// A profile's EBS section, as written in config files and shown by the
/// profiles endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbsSpec {
    #[serde(rename = "type")]
    pub volume_type: EbsVolumeType,
    /// `None`: AWS's default for the type (gp3: 3,000 baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<IopsRule>,
    /// MiB/s, gp3 only. `None`: AWS's default (gp3: 125).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u32>,
    #[serde(default)]
    pub encrypted: bool,
    /// KMS key id, ARN or alias; needs `encrypted`. `None`: the account's
    /// default EBS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Size when the request gives none.
    #[serde(default = "default_ebs_size")]
    pub default_size: ByteSize,
    /// Keep the EBS volume when the docker volume is removed.
    #[serde(default)]
    pub keep_on_remove: bool,
}

fn default_ebs_size() -> ByteSize {
    ByteSize(10 * crate::size::GIB)
}

/// Concrete CreateVolume/ModifyVolume parameters for one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbsSettings {
    pub volume_type: EbsVolumeType,
    pub size_gib: u64,
    /// `None`: do not send `Iops`.
    pub iops: Option<u32>,
    /// `None`: do not send `Throughput`.
    pub throughput: Option<u32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub keep_on_remove: bool,
}

/// Why EBS settings cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EbsError {
    #[error("{ty} volumes are {min}-{max} GiB; {size} GiB was asked for")]
    SizeOutOfRange {
        ty: EbsVolumeType,
        size: u64,
        min: u64,
        max: u64,
    },
    #[error("{ty} volumes take no IOPS setting")]
    IopsNotSupported { ty: EbsVolumeType },
    #[error("{ty} volumes need an IOPS rule (e.g. iops = {{ per_gib = 30 }})")]
    IopsRequired { ty: EbsVolumeType },
    #[error("{iops} IOPS is outside what a {size} GiB {ty} volume allows ({min}-{max})")]
    IopsOutOfRange {
        ty: EbsVolumeType,
        size: u64,
        iops: u32,
        min: u32,
        max: u32,
    },
    #[error(
        "the IOPS rule's bounds (min {min}, max {max}) leave no valid IOPS for a {size} GiB {ty} volume"
    )]
    IopsRuleUnsatisfiable {
        ty: EbsVolumeType,
        size: u64,
        min: u32,
        max: u32,
    },
    #[error("{ty} volumes take no throughput setting (only gp3 does)")]
    ThroughputNotSupported { ty: EbsVolumeType },
    #[error("{throughput} MiB/s is outside what {ty} allows at {iops} IOPS ({min}-{max} MiB/s)")]
    ThroughputOutOfRange {
        ty: EbsVolumeType,
        throughput: u32,
        iops: u32,
        min: u32,
        max: u32,
    },
    #[error("a KMS key is set but encrypted is false; set encrypted = true or drop kms_key_id")]
    KmsWithoutEncryption,
}

impl EbsSpec {
    /// Checks what can be checked without a size (used when a profile is defined).
    pub fn validate(&self) -> Result<(), EbsError> {
        let lim = self.volume_type.limits();
        let ty = self.volume_type;
        if self.kms_key_id.is_some() && !self.encrypted {
            return Err(EbsError::KmsWithoutEncryption);
        }
        match (lim.iops, self.iops) {
            (None, Some(_)) => return Err(EbsError::IopsNotSupported { ty }),
            (Some(l), None) if l.required => return Err(EbsError::IopsRequired { ty }),
            _ => {}
        }
        if self.throughput.is_some() && lim.throughput.is_none() {
            return Err(EbsError::ThroughputNotSupported { ty });
        }
        Ok(())
    }

    /// The CreateVolume parameters for a volume of `size` (or the profile's
    /// default size).
    pub fn settings(&self, size: Option<ByteSize>) -> Result<EbsSettings, EbsError> {
        self.validate()?;
        let ty = self.volume_type;
        let lim = ty.limits();
        let size_gib = size.unwrap_or(self.default_size).gib_ceil();
        if size_gib < lim.min_gib || size_gib > lim.max_gib {
            return Err(EbsError::SizeOutOfRange {
                ty,
                size: size_gib,
                min: lim.min_gib,
                max: lim.max_gib,
            });
        }
        let iops = match (lim.iops, self.iops) {
            (Some(l), Some(rule)) => Some(resolve_iops(ty, l, rule, size_gib)?),
            _ => None,
        };
        let throughput = match (lim.throughput, self.throughput) {
            (Some(t), Some(mbps)) => {
                let effective_iops = iops.or(lim.iops.and_then(|l| l.baseline)).unwrap_or(0);
                let by_iops =
                    u32::try_from(u64::from(effective_iops) * u64::from(t.max_per_kiops) / 1000)
                        .unwrap_or(u32::MAX);
                let max = t.max.min(by_iops.max(t.baseline));
                if mbps < t.min || mbps > max {
                    return Err(EbsError::ThroughputOutOfRange {
                        ty,
                        throughput: mbps,
                        iops: effective_iops,
                        min: t.min,
                        max,
                    });
                }
                Some(mbps)
            }
            _ => None,
        };
        Ok(EbsSettings {
            volume_type: ty,
            size_gib,
            iops,
            throughput,
            encrypted: self.encrypted,
            kms_key_id: self.kms_key_id.clone(),
            keep_on_remove: self.keep_on_remove,
        })
    }
}

fn resolve_iops(
    ty: EbsVolumeType,
    l: IopsLimits,
    rule: IopsRule,
    size: u64,
) -> Result<u32, EbsError> {
    let max = l.max_at(size);
    match rule {
        IopsRule::Fixed(iops) => {
            if iops < l.min || iops > max {
                return Err(EbsError::IopsOutOfRange {
                    ty,
                    size,
                    iops,
                    min: l.min,
                    max,
                });
            }
            Ok(iops)
        }
        IopsRule::PerGib {
            per_gib,
            min,
            max: rule_max,
        } => {
            let lo = l.min.max(min.unwrap_or(0));
            let hi = max.min(rule_max.unwrap_or(u32::MAX));
            if lo > hi {
                return Err(EbsError::IopsRuleUnsatisfiable {
                    ty,
                    size,
                    min: lo,
                    max: hi,
                });
            }
            let raw = u32::try_from(size.saturating_mul(u64::from(per_gib))).unwrap_or(u32::MAX);
            Ok(raw.clamp(lo, hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::GIB;

    /// The built-in gold profile's EBS spec: the tests check the rule the
    /// catalog ships, not a copy of it.
    fn gold() -> EbsSpec {
        crate::catalog::Catalog::builtin()
            .get("gold")
            .and_then(|p| p.def.ebs.clone())
            .expect("the built-in gold profile has an EBS spec")
    }

    #[test]
    fn gold_iops_is_thirty_per_gib_within_limits() {
        // (size GiB, expected IOPS)
        let cases = [
            (4, 120),  // io2 minimum size
            (10, 300), // default size
            (100, 3_000),
            (1_000, 30_000),
            (8_533, 255_990),
            (8_534, 256_000), // 256,020 clamped to io2's maximum
            (65_536, 256_000),
        ];
        for (size, want) in cases {
            let s = gold().settings(Some(ByteSize(size * GIB))).unwrap();
            assert_eq!(s.iops, Some(want), "size {size}");
            assert_eq!(s.size_gib, size);
            assert!(s.encrypted);
        }
    }

    #[test]
    fn gold_refuses_sizes_io2_cannot_have() {
        for size in [1, 3, 65_537] {
            let err = gold().settings(Some(ByteSize(size * GIB))).unwrap_err();
            assert!(
                matches!(err, EbsError::SizeOutOfRange { .. }),
                "{size}: {err}"
            );
        }
    }

    #[test]
    fn per_gib_rule_respects_the_floor() {
        // io1 at 30/GiB: 4 GiB gives 120 >= 100; a rule min lifts it.
        let mut spec = gold();
        spec.volume_type = EbsVolumeType::Io1;
        assert_eq!(
            spec.settings(Some(ByteSize(4 * GIB))).unwrap().iops,
            Some(120)
        );
        spec.iops = Some(IopsRule::PerGib {
            per_gib: 30,
            min: Some(150),
            max: None,
        });
        assert_eq!(
            spec.settings(Some(ByteSize(4 * GIB))).unwrap().iops,
            Some(150)
        );
        // io1 allows 50/GiB: a floor of 500 on 4 GiB cannot be met.
        spec.iops = Some(IopsRule::PerGib {
            per_gib: 30,
            min: Some(500),
            max: None,
        });
        assert!(matches!(
            spec.settings(Some(ByteSize(4 * GIB))),
            Err(EbsError::IopsRuleUnsatisfiable { .. })
        ));
        // io1 caps at 64,000.
        spec.iops = Some(IopsRule::PerGib {
            per_gib: 30,
            min: None,
            max: None,
        });
        assert_eq!(
            spec.settings(Some(ByteSize(16_000 * GIB))).unwrap().iops,
            Some(64_000)
        );
    }

    #[test]
    fn fixed_iops_outside_limits_is_refused_not_clamped() {
        let mut spec = gold();
        spec.volume_type = EbsVolumeType::Io1;
        spec.iops = Some(IopsRule::Fixed(1_000));
        // 1,000 IOPS needs >= 20 GiB on io1 (50/GiB).
        assert!(matches!(
            spec.settings(Some(ByteSize(10 * GIB))),
            Err(EbsError::IopsOutOfRange { .. })
        ));
        assert_eq!(
            spec.settings(Some(ByteSize(20 * GIB))).unwrap().iops,
            Some(1_000)
        );
    }

    #[test]
    fn gp3_defaults_send_nothing_extra() {
        // The built-in default profile's EBS spec is plain gp3.
        let spec = crate::catalog::Catalog::builtin()
            .get("default")
            .and_then(|p| p.def.ebs.clone())
            .expect("the built-in default profile has an EBS spec");
        assert_eq!(spec.volume_type, EbsVolumeType::Gp3);
        let s = spec.settings(None).unwrap();
        assert_eq!((s.size_gib, s.iops, s.throughput), (10, None, None));
        // Sizes round up to whole GiB; 1 byte is a 1 GiB volume.
        assert_eq!(spec.settings(Some(ByteSize(1))).unwrap().size_gib, 1);
        assert_eq!(spec.settings(Some(ByteSize(GIB + 1))).unwrap().size_gib, 2);
        assert!(spec.settings(Some(ByteSize(16_385 * GIB))).is_err());
    }

    #[test]
    fn gp3_throughput_is_bounded_by_iops() {
        let mut spec = EbsSpec {
            volume_type: EbsVolumeType::Gp3,
            iops: None,
            throughput: Some(750),
            encrypted: false,
            kms_key_id: None,
            default_size: ByteSize(10 * GIB),
            keep_on_remove: false,
        };
        // 3,000 baseline IOPS x 0.25 = 750 MiB/s.
        assert_eq!(spec.settings(None).unwrap().throughput, Some(750));
        spec.throughput = Some(751);
        assert!(matches!(
            spec.settings(None),
            Err(EbsError::ThroughputOutOfRange { .. })
        ));
        spec.iops = Some(IopsRule::Fixed(4_000));
        spec.throughput = Some(1_000);
        assert_eq!(spec.settings(None).unwrap().throughput, Some(1_000));
        spec.throughput = Some(100);
        assert!(spec.settings(None).is_err());
        // gp3 above baseline: at most 500 IOPS per GiB.
        spec.throughput = None;
        spec.iops = Some(IopsRule::Fixed(6_000));
        assert!(spec.settings(Some(ByteSize(10 * GIB))).is_err());
        assert!(spec.settings(Some(ByteSize(12 * GIB))).is_ok());
    }

    #[test]
    fn invalid_combinations_are_refused_at_definition() {
        let base = gold();
        let cases: Vec<(EbsSpec, EbsError)> = vec![
            (
                EbsSpec {
                    volume_type: EbsVolumeType::Gp2,
                    ..base.clone()
                },
                EbsError::IopsNotSupported {
                    ty: EbsVolumeType::Gp2,
                },
            ),
            (
                EbsSpec {
                    iops: None,
                    ..base.clone()
                },
                EbsError::IopsRequired {
                    ty: EbsVolumeType::Io2,
                },
            ),
            (
                EbsSpec {
                    throughput: Some(200),
                    ..base.clone()
                },
                EbsError::ThroughputNotSupported {
                    ty: EbsVolumeType::Io2,
                },
            ),
            (
                EbsSpec {
                    encrypted: false,
                    kms_key_id: Some("alias/x".into()),
                    ..base.clone()
                },
                EbsError::KmsWithoutEncryption,
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.validate(), Err(want));
        }
    }

    #[test]
    fn other_types_size_ranges() {
        let cases = [
            (EbsVolumeType::St1, 124, false),
            (EbsVolumeType::St1, 125, true),
            (EbsVolumeType::Sc1, 16_384, true),
            (EbsVolumeType::Standard, 1_024, true),
            (EbsVolumeType::Standard, 1_025, false),
            (EbsVolumeType::Gp2, 1, true),
        ];
        for (ty, size, ok) in cases {
            let spec = EbsSpec {
                volume_type: ty,
                iops: None,
                throughput: None,
                encrypted: false,
                kms_key_id: None,
                default_size: ByteSize(GIB),
                keep_on_remove: false,
            };
            assert_eq!(
                spec.settings(Some(ByteSize(size * GIB))).is_ok(),
                ok,
                "{ty} {size}"
            );
        }
    }
}
