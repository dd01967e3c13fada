//! The per-migration token (issue 12, finding 5): the destination's agent
//! makes one when a migration prepares a volume, and takes rounds and the
//! commit only with it. A peer is already known by its certificate; the
//! token also tells apart two runs from the same node, so a stale
//! `daffe migrate` (a process from before a rerun, a retry that woke late)
//! cannot write into, or commit, the receive a newer run prepared.
//!
//! Kept as a file in the receive's state directory (beside the mover's
//! journal, on the volume's own storage, private to daffe): it lives as long
//! as the partial copy does, and survives an agent restart.

use std::fs;
use std::path::{Path, PathBuf};

/// The token's file in the receive state directory.
pub(crate) const TOKEN_FILE: &str = "migration.token";
/// 128 random bits: not guessable by a peer that never saw it.
const TOKEN_BYTES: usize = 16;

/// Why a token was refused or could not be kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// No migration prepared this receive (or its state was lost).
    #[error("no migration token is on record for it: prepare it again (rerun `daffe migrate`)")]
    Missing,
    /// Another run prepared it since, or the token is made up.
    #[error(
        "the request's migration token is not the one its prepare gave (another run prepared it \
         since?)"
    )]
    Mismatch,
    /// The state directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes a new token for the receive whose state is in `state_dir` (which
/// replaces any earlier run's) and returns it.
pub(crate) fn issue(state_dir: &Path) -> Result<String, TokenError> {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // A crash leaves the old token or the new one, never half a token.
    let path = state_dir.join(TOKEN_FILE);
    // `replace` makes the state dir when it is missing.
    crate::durable::replace(&path, token.as_bytes(), 0o600)
        .map_err(|source| TokenError::Io { path, source })?;
    Ok(token)
}

/// Whether `token` is the one on record for the receive in `state_dir`.
pub(crate) fn check(state_dir: &Path, token: &str) -> Result<(), TokenError> {
    let path = state_dir.join(TOKEN_FILE);
    let kept = match fs::read(&path) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TokenError::Missing),
        Err(source) => return Err(TokenError::Io { path, source }),
    };
    if !kept.is_empty() && same(&kept, token.as_bytes()) {
        Ok(())
    } else {
        Err(TokenError::Mismatch)
    }
}

/// Byte equality that takes as long whatever the first difference
/// (a peer timing refusals learns nothing of the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_taken_until_a_new_one_replaces_it() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(".mover-receive");
        assert!(matches!(check(&state, "x"), Err(TokenError::Missing)));
        let first = issue(&state).unwrap();
        assert_eq!(first.len(), 2 * TOKEN_BYTES);
        check(&state, &first).unwrap();
        assert!(matches!(check(&state, ""), Err(TokenError::Mismatch)));
        assert!(matches!(
            check(&state, &first[1..]),
            Err(TokenError::Mismatch)
        ));
        let second = issue(&state).unwrap();
        assert_ne!(first, second);
        assert!(matches!(check(&state, &first), Err(TokenError::Mismatch)));
        check(&state, &second).unwrap();
        assert!(!state.join(format!("{TOKEN_FILE}.tmp")).exists());
    }
}
