//! Certificates for the agents' mutual TLS: a small private CA per cluster of
//! daffe hosts, and one certificate per node signed by it (`daffe agent init`,
//! `daffe agent issue`).
//!
//! Trust model: every node holding a certificate of the cluster CA may push to
//! and receive from every other (one trust domain, like an SSH key shared by an
//! operator's hosts). Every node certificate names [`AGENT_NAME`] as its DNS
//! name, so peers are addressed by IP or any host name without re-issuing,
//! and the node's own name as its subject's common name: that name, read
//! back by [`node_name`] and checked on every connection, is the peer's
//! identity (issue 12, finding 5), whatever its `Hello` says.
//! The CA key stays on the host where it was made; nodes get `ca.pem`,
//! `node.pem` and `node.key` only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The DNS name in every node certificate, checked by the dialing side.
pub const AGENT_NAME: &str = "daffe-agent";
/// The CA's subject. Fixed, because issuing rebuilds the issuer from it (rcgen
/// would need an X.509 parser to read it back from `ca.pem`).
const CA_COMMON_NAME: &str = "daffe agent CA";
/// CA lifetime: long, since rotating it means re-issuing every node.
const CA_DAYS: u64 = 20 * 365;
/// Node certificate lifetime (issue 12, low finding: there is no revocation
/// list, so a stolen node key is good until its certificate ends; it was 5
/// years). A node is re-issued with `daffe agent issue` before then
/// (SECURITY.md, "Node certificates").
pub const NODE_DAYS: u64 = 397;
/// How far back a certificate starts: clock skew between hosts.
const SKEW_DAYS: u64 = 1;

/// The cluster CA's certificate, in a node's TLS folder.
pub const CA_CERT: &str = "ca.pem";
/// The cluster CA's private key (only on the node that made the CA).
pub const CA_KEY: &str = "ca.key";
/// The node's certificate.
pub const NODE_CERT: &str = "node.pem";
/// The node's private key.
pub const NODE_KEY: &str = "node.key";

/// Errors creating or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// rcgen could not make a key or certificate.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file is already there: never overwritten.
    #[error("{path} already exists; refusing to overwrite a key (remove it first)")]
    Exists {
        /// The file found.
        path: PathBuf,
    },
    /// The node name is not 1-64 letters, digits, `.`, `-`, `_`.
    #[error("node name {0:?} must be 1-64 characters of letters, digits, '.', '-', '_'")]
    BadName(String),
    /// A certificate file could not be read as PEM.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The node certificate names no node (see `certname`).
    #[error("{path}: {source}")]
    NodeName {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: super::certname::CertNameError,
    },
}

/// The files a node needs for mutual TLS.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

impl NodeFiles {
    /// The conventional layout of a node's TLS directory.
    pub fn in_dir(dir: &Path) -> Self {
        NodeFiles {
            ca: dir.join(CA_CERT),
            cert: dir.join(NODE_CERT),
            key: dir.join(NODE_KEY),
        }
    }
}

/// The node name this node's certificate carries (its subject's common
/// name): the name peers know it by, and so the one its `Hello` must say.
pub fn node_name(files: &NodeFiles) -> Result<String, IdentityError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(&files.cert).map_err(|e| IdentityError::Pem {
        path: files.cert.clone(),
        message: e.to_string(),
    })?;
    super::certname::node_name_of(&der).map_err(|source| IdentityError::NodeName {
        path: files.cert.clone(),
        source,
    })
}

fn ca_params() -> Result<CertificateParams, IdentityError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut p, CA_DAYS);
    Ok(p)
}

fn set_validity(p: &mut CertificateParams, days: u64) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let date = |day: u64| {
        let (y, m, d) = civil_from_days(day);
        rcgen::date_time_ymd(y, m, d)
    };
    p.not_before = date(today.saturating_sub(SKEW_DAYS));
    p.not_after = date(today + days);
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days after the epoch).
fn civil_from_days(days: u64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (
        i32::try_from(y).unwrap_or(i32::MAX),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    if super::certname::is_node_name(name) {
        Ok(())
    } else {
        Err(IdentityError::BadName(name.to_string()))
    }
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes `dir` (and missing parents) private to its owner (0700); a
/// directory that is already there is used as it is. `daffe agent issue
/// --out /etc/daffe` must not chmod a directory other software owns (issue
/// 12, low finding): the keys in it are 0600 files of their own.
fn make_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| IdentityError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        // Ours: 0700 whatever the umask left of it.
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Creates a new cluster CA in `dir` (`ca.pem`, `ca.key`), and a certificate
/// for this node (`node_name`) beside it. Refuses to overwrite existing keys.
pub fn init(dir: &Path, node_name: &str) -> Result<NodeFiles, IdentityError> {
    check_name(node_name)?;
    make_dir(dir)?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_new(&dir.join(CA_KEY), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join(CA_CERT), &cert.pem(), 0o644)?;
    issue(dir, node_name, dir)
}

/// Issues a certificate for `node_name` with the CA in `ca_dir`, writing
/// `ca.pem`, `node.pem` and `node.key` into `out_dir` (made if missing).
pub fn issue(ca_dir: &Path, node_name: &str, out_dir: &Path) -> Result<NodeFiles, IdentityError> {
    check_name(node_name)?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?)?;
    let ca_pem = read(&ca_dir.join(CA_CERT))?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut p = CertificateParams::new(vec![AGENT_NAME.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, node_name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    set_validity(&mut p, NODE_DAYS);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;

    make_dir(out_dir)?;
    let files = NodeFiles::in_dir(out_dir);
    write_new(&files.key, &key.serialize_pem(), 0o600)?;
    write_new(&files.cert, &cert.pem(), 0o644)?;
    if out_dir.join(CA_CERT) != ca_dir.join(CA_CERT) {
        write_new(&files.ca, &ca_pem, 0o644)?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_writes_private_keys_0600() {
        let d = tempfile::tempdir().unwrap();
        let a = init(&d.path().join("a"), "hosta").unwrap();
        let b = issue(&d.path().join("a"), "hostb", &d.path().join("b")).unwrap();
        for f in [&a.key, &b.key, &d.path().join("a").join(CA_KEY)] {
            let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        assert_eq!(read(&a.ca).unwrap(), read(&b.ca).unwrap());
        // Each certificate names its node (finding 5: the peer's identity).
        assert_eq!(node_name(&a).unwrap(), "hosta");
        assert_eq!(node_name(&b).unwrap(), "hostb");
        assert!(
            !d.path().join("b").join(CA_KEY).exists(),
            "CA key stays home"
        );
    }

    /// notBefore and notAfter of a PEM certificate, as seconds since the
    /// epoch: the first two UTCTimes of the DER (rcgen writes UTCTime up to
    /// 2049).
    fn validity(pem: &str) -> (i64, i64) {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let times: Vec<i64> = der
            .windows(15)
            .filter(|w| w[0] == 0x17 && w[1] == 13 && w[14] == b'Z')
            .map(|w| {
                let n = |i: usize| i64::from((w[i] - b'0') * 10 + (w[i + 1] - b'0'));
                let (y, mo, d) = (2000 + n(2), n(4), n(6));
                // Days from civil (Hinnant), for 2000..2049.
                let (y2, m2) = if mo <= 2 {
                    (y - 1, mo + 9)
                } else {
                    (y, mo - 3)
                };
                let days =
                    365 * y2 + y2 / 4 - y2 / 100 + y2 / 400 + (153 * m2 + 2) / 5 + d - 1 - 719_468;
                days * 86_400 + n(8) * 3600 + n(10) * 60 + n(12)
            })
            .take(2)
            .collect();
        (times[0], times[1])
    }

    /// Issue 12, low finding: no revocation, so a node certificate's
    /// lifetime bounds a stolen key's use. It was 5 years (from the start of
    /// the year before); now [`NODE_DAYS`] from today (a day back for skew).
    #[test]
    fn node_certificates_are_short_lived_and_dated_from_today() {
        let d = tempfile::tempdir().unwrap();
        let files = init(d.path(), "hosta").unwrap();
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let (from, until) = validity(&read(&files.cert).unwrap());
        let day = 86_400;
        let nd = i64::try_from(NODE_DAYS).unwrap();
        assert!(
            (now - 2 * day..=now - day + day).contains(&from),
            "notBefore {from}, now {now}"
        );
        assert!(
            (now + (nd - 1) * day..=now + (nd + 1) * day).contains(&until),
            "notAfter {until}: {} days from now",
            (until - now) / day
        );
        let (_, ca_until) = validity(&read(&d.path().join(CA_CERT)).unwrap());
        assert!(ca_until > now + 19 * 365 * day, "the CA stays long-lived");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn issue_into_an_existing_directory_leaves_its_mode_alone() {
        let d = tempfile::tempdir().unwrap();
        init(&d.path().join("ca"), "hosta").unwrap();
        let shared = d.path().join("etc");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let files = issue(&d.path().join("ca"), "hostb", &shared).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&shared), 0o755, "an existing directory keeps its mode");
        assert_eq!(mode(&files.key), 0o600);
        let fresh = d.path().join("new").join("tls");
        issue(&d.path().join("ca"), "hostc", &fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700, "a directory issue makes is private");
        fs::write(d.path().join("file"), "x").unwrap();
        assert!(issue(&d.path().join("ca"), "hostd", &d.path().join("file")).is_err());
    }

    #[test]
    fn refuses_to_overwrite_keys_and_bad_names() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), "hosta").unwrap();
        assert!(matches!(
            init(d.path(), "hosta"),
            Err(IdentityError::Exists { .. })
        ));
        assert!(matches!(
            issue(d.path(), "bad name/..", &d.path().join("x")),
            Err(IdentityError::BadName(_))
        ));
    }
}
