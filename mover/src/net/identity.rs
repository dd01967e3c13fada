//! Certificates for the agents' mutual TLS: a small private CA per cluster of
//! daffe hosts, and one certificate per node signed by it (`daffe agent init`,
//! `daffe agent issue`).
//!
//! Trust model: every node holding a certificate of the cluster CA may push to
//! and receive from every other (one trust domain, like an SSH key shared by an
//! operator's hosts). Every node certificate names [`AGENT_NAME`] as its DNS
//! name, so peers are addressed by IP or any host name without re-issuing.
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
const CA_YEARS: i32 = 20;
/// Node certificate lifetime.
const NODE_YEARS: i32 = 5;

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

fn ca_params() -> Result<CertificateParams, IdentityError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut p, CA_YEARS);
    Ok(p)
}

fn set_validity(p: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Calendar precision is not needed: start a year back (clock skew between
    // hosts), end `years` ahead.
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
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

fn make_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
        IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        }
    })
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
    set_validity(&mut p, NODE_YEARS);
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
        assert!(
            !d.path().join("b").join(CA_KEY).exists(),
            "CA key stays home"
        );
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
