//! Client IP to client region: a MaxMind-format database (`.mmdb`, read with
//! the `maxminddb` crate) gives a location, and the region table says which
//! cloud region is nearest to it.
//!
//! From a record, in order: a `cloud_region` string (an operator's own
//! database may map networks to regions directly), else `location`
//! latitude/longitude (GeoIP2/GeoLite2 City) to the nearest region with
//! coordinates, else the continent code to that continent's main region.
//! Private, loopback, link-local and unspecified addresses, addresses the
//! database does not hold and records with none of these are "unknown".

use crate::rtt::RttTable;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The region name requests from unplaceable clients count under.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
}

/// Maps a client address to a region name of the table (or [`UNKNOWN`]).
pub trait Locator {
    fn locate(&mut self, ip: IpAddr) -> String;
}

/// Addresses that never say where a client is.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT (RFC 6598)
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                // fc00::/7 unique local, fe80::/10 link-local
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[derive(Debug, Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Continent {
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Record {
    cloud_region: Option<String>,
    location: Option<Location>,
    continent: Option<Continent>,
}

/// Each continent's main region in the built-in table, for records with a
/// continent but no coordinates (GeoLite2 Country).
const CONTINENT_REGION: [(&str, &str); 6] = [
    ("NA", "us-east-1"),
    ("SA", "sa-east-1"),
    ("EU", "eu-central-1"),
    ("AF", "af-south-1"),
    ("AS", "ap-southeast-1"),
    ("OC", "ap-southeast-2"),
];

/// Region of a decoded record, or None.
fn region_of(rec: &Record, table: &RttTable) -> Option<String> {
    if let Some(r) = rec.cloud_region.as_deref()
        && table.index(r).is_some()
    {
        return Some(r.to_owned());
    }
    if let Some(Location {
        latitude: Some(lat),
        longitude: Some(lon),
    }) = rec.location
        && let Some(i) = table.nearest(lat, lon)
    {
        return Some(table.name(i).to_owned());
    }
    let code = rec.continent.as_ref()?.code.as_deref()?;
    let (_, region) = CONTINENT_REGION.iter().find(|(c, _)| *c == code)?;
    table.index(region).map(|_| (*region).to_owned())
}

/// A `.mmdb` file held in memory, with a cache of decoded records (many
/// clients share a record).
pub struct MmdbLocator {
    reader: maxminddb::Reader<Vec<u8>>,
    table: RttTable,
    cache: HashMap<usize, Option<String>>,
}

impl std::fmt::Debug for MmdbLocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdbLocator")
            .field("database_type", &self.reader.metadata().database_type)
            .finish()
    }
}

impl MmdbLocator {
    pub fn open(path: &Path, table: RttTable) -> Result<Self, GeoError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|source| GeoError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_reader(reader, table))
    }

    pub fn from_bytes(bytes: Vec<u8>, table: RttTable) -> Result<Self, GeoError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| GeoError::Open {
            path: PathBuf::from("(in memory)"),
            source,
        })?;
        Ok(Self::from_reader(reader, table))
    }

    fn from_reader(reader: maxminddb::Reader<Vec<u8>>, table: RttTable) -> Self {
        Self {
            reader,
            table,
            cache: HashMap::new(),
        }
    }
}

impl Locator for MmdbLocator {
    fn locate(&mut self, ip: IpAddr) -> String {
        // ::ffff:a.b.c.d is an IPv4 client (dual-stack sockets log it so).
        let ip = ip.to_canonical();
        if is_private(ip) {
            return UNKNOWN.into();
        }
        // An IPv6 address in an IPv4-only database is an error there: it
        // is simply not located.
        let Ok(found) = self.reader.lookup(ip) else {
            return UNKNOWN.into();
        };
        let Some(offset) = found.offset() else {
            return UNKNOWN.into();
        };
        if let Some(hit) = self.cache.get(&offset) {
            return hit.clone().unwrap_or_else(|| UNKNOWN.into());
        }
        let region = match found.decode::<Record>() {
            Ok(Some(rec)) => region_of(&rec, &self.table),
            _ => None,
        };
        self.cache.insert(offset, region.clone());
        region.unwrap_or_else(|| UNKNOWN.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mmdb::{MmdbWriter, Value};

    fn table() -> RttTable {
        RttTable::builtin().unwrap()
    }

    fn test_db() -> Vec<u8> {
        let mut w = MmdbWriter::new("daffe-test");
        let loc = |lat: f64, lon: f64| {
            Value::map([(
                "location",
                Value::map([
                    ("latitude", Value::F64(lat)),
                    ("longitude", Value::F64(lon)),
                ]),
            )])
        };
        w.insert("192.0.2.0/24".parse().unwrap(), loc(48.14, 11.58)); // Munich
        w.insert("198.51.100.0/25".parse().unwrap(), loc(35.0, 135.8)); // Kyoto
        w.insert(
            "198.51.100.128/25".parse().unwrap(),
            Value::map([("cloud_region", Value::Str("sa-east-1".into()))]),
        );
        w.insert(
            "203.0.113.0/24".parse().unwrap(),
            Value::map([("continent", Value::map([("code", Value::Str("OC".into()))]))]),
        );
        w.insert(
            "2001:db8:1::/48".parse().unwrap(),
            Value::map([(
                "country",
                Value::map([("iso_code", Value::Str("XX".into()))]),
            )]),
        );
        w.insert("2001:db8:2::/48".parse().unwrap(), loc(40.7, -74.0)); // New York
        w.insert("10.0.0.0/8".parse().unwrap(), loc(40.7, -74.0)); // never asked
        w.to_bytes()
    }

    #[test]
    fn lookups_against_a_test_database() {
        let mut l = MmdbLocator::from_bytes(test_db(), table()).unwrap();
        for (ip, want) in [
            ("192.0.2.77", "eu-central-1"),
            ("198.51.100.5", "ap-northeast-1"),
            ("198.51.100.200", "sa-east-1"),
            ("203.0.113.1", "ap-southeast-2"),
            ("2001:db8:2::42", "us-east-1"),
            ("::ffff:192.0.2.1", "eu-central-1"),
            // record without location/continent/region
            ("2001:db8:1::1", UNKNOWN),
            // not in the database
            ("8.8.8.8", UNKNOWN),
            ("2001:db8:3::1", UNKNOWN),
            // private, even though the database maps it
            ("10.1.2.3", UNKNOWN),
            ("127.0.0.1", UNKNOWN),
            ("100.64.1.1", UNKNOWN),
            ("fd00::1", UNKNOWN),
            ("fe80::1", UNKNOWN),
            ("::1", UNKNOWN),
        ] {
            assert_eq!(l.locate(ip.parse().unwrap()), want, "{ip}");
        }
        // The cache answers the same.
        assert_eq!(l.locate("192.0.2.1".parse().unwrap()), "eu-central-1");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.mmdb");
        std::fs::write(&p, b"not a database").unwrap();
        let err = MmdbLocator::open(&p, table()).unwrap_err().to_string();
        assert!(err.contains("x.mmdb"), "{err}");
        assert!(MmdbLocator::open(&dir.path().join("none"), table()).is_err());
    }
}
