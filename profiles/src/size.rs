//! Human sizes (`20G`, `512MiB`, `1073741824`) as used in `-o size=` and in
//! profile files.
//!
//! All suffixes are binary (K = 1024): operators write `size=20G` for disks and
//! expect a 20 GiB filesystem, and EBS sizes are GiB. `GB` is read as GiB too,
//! because refusing it would only annoy; the docs say so.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {0:?}: write a whole number of bytes, optionally followed by K, M, G or T (powers of 1024), e.g. 20G or 512M"
)]
pub struct SizeError(pub String);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Size in GiB, rounded up (EBS sizes are whole GiB).
    pub fn gib_ceil(self) -> u64 {
        self.0.div_ceil(GIB)
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        let err = || SizeError(s.to_owned());
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(err());
        }
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => KIB,
            "m" | "mb" | "mib" => MIB,
            "g" | "gb" | "gib" => GIB,
            "t" | "tb" | "tib" => TIB,
            _ => return Err(err()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    /// The largest exact binary unit, so `Display` and `FromStr` round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)] {
            if b != 0 && b.is_multiple_of(m) {
                return write!(f, "{}{}", b / m, unit);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        let cases = [
            ("0", 0),
            ("1", 1),
            ("512", 512),
            ("1K", KIB),
            ("1k", KIB),
            ("4KiB", 4 * KIB),
            ("512M", 512 * MIB),
            ("512MB", 512 * MIB),
            ("20G", 20 * GIB),
            ("20GiB", 20 * GIB),
            ("20gb", 20 * GIB),
            ("2T", 2 * TIB),
            (" 3G ", 3 * GIB),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(want)), "{s}");
        }
    }

    #[test]
    fn refuses_bad_sizes() {
        for s in [
            "",
            "G",
            "-1G",
            "1.5G",
            "20X",
            "20 G",
            "1P",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(s.parse::<ByteSize>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for b in [0, 1, 1000, KIB, 3 * MIB, 20 * GIB, 5 * TIB, GIB + 1] {
            let s = ByteSize(b).to_string();
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(b)), "{s}");
        }
        assert_eq!(ByteSize(20 * GIB).to_string(), "20G");
    }

    #[test]
    fn gib_rounds_up() {
        assert_eq!(ByteSize(1).gib_ceil(), 1);
        assert_eq!(ByteSize(GIB).gib_ceil(), 1);
        assert_eq!(ByteSize(GIB + 1).gib_ceil(), 2);
        assert_eq!(ByteSize(0).gib_ceil(), 0);
    }
}
