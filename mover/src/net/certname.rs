//! The node name a certificate carries: its subject's one common name (CN).
//!
//! `daffe agent init` and `daffe agent issue` write the node's name there
//! (`identity::issue`); the DNS name is the shared [`super::identity::AGENT_NAME`].
//! A peer's identity is this name, read from the certificate its TLS
//! handshake verified, never the name it declares in `Hello` (issue 12,
//! finding 5).
//!
//! A small DER reader, not an X.509 library: it walks to the subject of a
//! certificate that rustls has already verified against the cluster CA, and
//! refuses anything unusual (no CN, two CNs, a name outside the node-name
//! grammar) rather than guessing.

/// Why no node name could be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertNameError {
    /// The DER did not have the shape of a certificate.
    #[error("not a certificate daffe can read ({0})")]
    Malformed(&'static str),
    /// The subject has no common name.
    #[error("the certificate's subject has no common name (CN): not a daffe node certificate")]
    NoName,
    /// The subject has more than one common name.
    #[error("the certificate's subject has several common names: refused as ambiguous")]
    TwoNames,
    /// The common name is not a node name.
    #[error("the certificate's common name {0:?} is not a node name")]
    BadName(String),
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` of a v3 certificate.
const VERSION: u8 = 0xa0;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
/// 2.5.4.3, id-at-commonName.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// One TLV: its tag, contents, and what follows it.
fn tlv(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), CertNameError> {
    let bad = CertNameError::Malformed;
    let (&tag, rest) = buf.split_first().ok_or(bad("truncated tag"))?;
    let (&first, rest) = rest.split_first().ok_or(bad("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length bytes (a certificate is far below 4 GiB).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad("length past the end"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The TLV at the front of `buf`, which must have tag `want`.
fn expect<'a>(
    buf: &'a [u8],
    want: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertNameError> {
    match tlv(buf)? {
        (tag, body, rest) if tag == want => Ok((body, rest)),
        _ => Err(CertNameError::Malformed(what)),
    }
}

/// The subject's one common name, as a node name (1-64 of letters, digits,
/// `.`, `-`, `_`: what `daffe agent issue` accepts).
pub fn node_name_of(cert_der: &[u8]) -> Result<String, CertNameError> {
    let (cert, _) = expect(cert_der, SEQUENCE, "certificate")?;
    let (mut tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.2;
    }
    let (_, tbs) = expect(tbs, INTEGER, "serial number")?;
    let (_, tbs) = expect(tbs, SEQUENCE, "signature algorithm")?;
    let (_, tbs) = expect(tbs, SEQUENCE, "issuer")?;
    let (_, tbs) = expect(tbs, SEQUENCE, "validity")?;
    let (mut subject, _) = expect(tbs, SEQUENCE, "subject")?;
    let mut found: Option<String> = None;
    while !subject.is_empty() {
        let (mut rdn, rest) = expect(subject, SET, "relative distinguished name")?;
        subject = rest;
        while !rdn.is_empty() {
            let (atv, rest) = expect(rdn, SEQUENCE, "attribute")?;
            rdn = rest;
            let (oid, value) = expect(atv, OID, "attribute type")?;
            if oid != CN_OID {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            if ![UTF8_STRING, PRINTABLE_STRING, IA5_STRING].contains(&tag) {
                return Err(CertNameError::Malformed("common name is not a string"));
            }
            let text = String::from_utf8_lossy(text).into_owned();
            if found.replace(text).is_some() {
                return Err(CertNameError::TwoNames);
            }
        }
    }
    let name = found.ok_or(CertNameError::NoName)?;
    if is_node_name(&name) {
        Ok(name)
    } else {
        Err(CertNameError::BadName(name))
    }
}

/// 1-64 letters, digits, `.`, `-`, `_`.
pub(crate) fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(names: &[(DnType, &str)]) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["daffe-agent".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in names {
            p.distinguished_name.push(t.clone(), *v);
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_one_common_name() {
        let der = cert(&[
            (DnType::OrganizationName, "daffe"),
            (DnType::CommonName, "host-b.1"),
        ]);
        assert_eq!(node_name_of(&der).unwrap(), "host-b.1");
    }

    #[test]
    fn refuses_no_name_a_bad_name_and_junk() {
        assert_eq!(
            node_name_of(&cert(&[(DnType::OrganizationName, "x")])),
            Err(CertNameError::NoName)
        );
        assert!(matches!(
            node_name_of(&cert(&[(DnType::CommonName, "daffe agent CA")])),
            Err(CertNameError::BadName(_))
        ));
        let der = cert(&[(DnType::CommonName, "hosta")]);
        for cut in [0, 1, 5, 40, der.len() / 2] {
            assert!(node_name_of(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(node_name_of(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert!(node_name_of(b"\x30\x89\x01").is_err());
    }
}
