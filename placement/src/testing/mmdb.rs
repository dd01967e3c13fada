//! A small MaxMind DB (`.mmdb`, format 2.0) writer for tests: an IPv6 search
//! tree (IPv4 networks live under `::/96`, where readers look for IPv4
//! addresses), 32-bit records, and the data types location records use.
//! Files it writes read back with the `maxminddb` crate and with
//! libmaxminddb's `mmdblookup`.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>.

use std::net::IpAddr;

/// A network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?}: no /len"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Self { addr, len })
    }
}

impl Net {
    /// The prefix as bits of the IPv6 tree.
    fn bits(&self) -> Vec<bool> {
        let (bytes, skip): ([u8; 16], usize) = match self.addr {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[12..].copy_from_slice(&v4.octets());
                (b, 96)
            }
            IpAddr::V6(v6) => (v6.octets(), 0),
        };
        (0..skip + self.len as usize)
            .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
            .collect()
    }
}

/// The data section's values this writer can encode.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    F64(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Self {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Str(s) => {
                control(out, 2, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::F64(x) => {
                control(out, 3, 8);
                out.extend_from_slice(&x.to_be_bytes());
            }
            Value::U16(x) => uint(out, 5, u64::from(*x)),
            Value::U32(x) => uint(out, 6, u64::from(*x)),
            Value::U64(x) => uint(out, 9, *x),
            Value::Map(entries) => {
                control(out, 7, entries.len());
                for (k, v) in entries {
                    Value::Str(k.clone()).encode(out);
                    v.encode(out);
                }
            }
            Value::Array(items) => {
                control(out, 11, items.len());
                for v in items {
                    v.encode(out);
                }
            }
        }
    }
}

/// Unsigned integers take as few big-endian bytes as their value needs.
fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, ty, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

/// Control byte: type in the top 3 bits (0 and an extra byte for types
/// above 7), size in the low 5 (29-31 announce 1-3 more size bytes).
fn control(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (first, extra): (u8, Vec<u8>) = match size {
        0..=28 => (u8::try_from(size).expect("0..=28"), vec![]),
        29..=284 => (29, vec![u8::try_from(size - 29).expect("0..=255")]),
        285..=65_820 => (
            30,
            u16::try_from(size - 285)
                .expect("0..=65_535")
                .to_be_bytes()
                .to_vec(),
        ),
        _ => (
            31,
            u32::try_from(size - 65_821)
                .expect("a test database is under 4 GiB")
                .to_be_bytes()[1..]
                .to_vec(),
        ),
    };
    if ty <= 7 {
        out.push((ty << 5) | first);
    } else {
        out.push(first);
        out.push(ty - 7);
    }
    out.extend_from_slice(&extra);
}

#[derive(Debug, Clone, Copy)]
enum Child {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a database in memory.
#[derive(Debug)]
pub struct MmdbWriter {
    database_type: String,
    nodes: Vec<[Child; 2]>,
    data: Vec<u8>,
}

impl MmdbWriter {
    pub fn new(database_type: &str) -> Self {
        Self {
            database_type: database_type.to_owned(),
            nodes: vec![[Child::Empty; 2]],
            data: Vec::new(),
        }
    }

    /// Maps a network to a record. Networks must not nest (a test helper:
    /// it panics on overlap rather than guess which wins).
    pub fn insert(&mut self, net: Net, value: Value) {
        let offset = self.data.len();
        value.encode(&mut self.data);
        let bits = net.bits();
        let mut node = 0;
        for (i, bit) in bits.iter().enumerate() {
            let side = usize::from(*bit);
            if i + 1 == bits.len() {
                assert!(
                    matches!(self.nodes[node][side], Child::Empty),
                    "{net:?} overlaps another network"
                );
                self.nodes[node][side] = Child::Data(offset);
                return;
            }
            node = match self.nodes[node][side] {
                Child::Node(n) => n,
                Child::Empty => {
                    self.nodes.push([Child::Empty; 2]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][side] = Child::Node(n);
                    n
                }
                Child::Data(_) => panic!("{net:?} lies inside another network"),
            };
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let count = self.nodes.len();
        let record = |c: Child| -> u32 {
            let v = match c {
                Child::Empty => count,
                Child::Node(n) => n,
                // Data pointers count from the end of the tree, past the
                // 16-byte separator.
                Child::Data(off) => count + 16 + off,
            };
            u32::try_from(v).expect("test database too large for 32-bit records")
        };
        let mut out = Vec::new();
        for [l, r] in &self.nodes {
            out.extend_from_slice(&record(*l).to_be_bytes());
            out.extend_from_slice(&record(*r).to_be_bytes());
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        Value::Map(vec![
            ("binary_format_major_version".into(), Value::U16(2)),
            ("binary_format_minor_version".into(), Value::U16(0)),
            // libmaxminddb takes 0 for "missing" and refuses the file; a
            // fixed value keeps the output byte-for-byte reproducible.
            ("build_epoch".into(), Value::U64(1)),
            (
                "database_type".into(),
                Value::Str(self.database_type.clone()),
            ),
            (
                "description".into(),
                Value::map([("en", Value::Str("daffe test database".into()))]),
            ),
            ("ip_version".into(), Value::U16(6)),
            (
                "languages".into(),
                Value::Array(vec![Value::Str("en".into())]),
            ),
            (
                "node_count".into(),
                Value::U32(u32::try_from(count).expect("a test database has few nodes")),
            ),
            ("record_size".into(), Value::U16(32)),
        ])
        .encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_extended_types_encode_as_the_spec_says() {
        let mut out = Vec::new();
        control(&mut out, 2, 3);
        assert_eq!(out, [0x43]);
        out.clear();
        control(&mut out, 2, 300);
        assert_eq!(out, [0x5e, 0x00, 15]);
        out.clear();
        control(&mut out, 11, 2);
        assert_eq!(out, [0x02, 0x04]);
        out.clear();
        uint(&mut out, 6, 0);
        assert_eq!(out, [0xc0]);
        assert!("1.2.3.0/33".parse::<Net>().is_err());
        assert_eq!("::/0".parse::<Net>().unwrap().bits().len(), 0);
    }

    #[test]
    fn maxminddb_reads_what_it_wrote() {
        let mut w = MmdbWriter::new("t");
        w.insert(
            "192.0.2.0/24".parse().unwrap(),
            Value::map([("n", Value::U32(7)), ("s", Value::Str("x".repeat(300)))]),
        );
        let r = maxminddb::Reader::from_source(w.to_bytes()).unwrap();
        r.verify().unwrap();
        #[derive(serde::Deserialize)]
        struct Rec {
            n: u32,
            s: String,
        }
        let hit = r.lookup("192.0.2.9".parse().unwrap()).unwrap();
        let rec: Rec = hit.decode().unwrap().unwrap();
        assert_eq!((rec.n, rec.s.len()), (7, 300));
        assert_eq!(hit.network().unwrap().to_string(), "192.0.2.0/24");
        assert!(!r.lookup("192.0.3.1".parse().unwrap()).unwrap().has_data());
    }
}
