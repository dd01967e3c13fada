//! The `daffe` exit codes, one per kind of failure a script acts on
//! differently (README, "Exit codes"):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `status --health`: healthy) |
//! | 1 | any other failure (for `status --health`: unhealthy) |
//! | 2 | usage: a wrong flag, argument or value (clap's code) |
//! | 3 | not found: no such volume, profile or source path |
//! | 4 | in use: the volume is mounted (stop its containers, or wait) |
//! | 5 | remote failure: the daemon, an agent or AWS could not be reached or failed |

use crate::control::ClientError;
use crate::service::ErrorCode;
use std::process::ExitCode;

pub(crate) const FAILURE: u8 = 1;
/// clap's own code for a usage error; used where daffe finds one itself.
pub(crate) const USAGE: u8 = 2;
pub(crate) const NOT_FOUND: u8 = 3;
pub(crate) const IN_USE: u8 = 4;
pub(crate) const REMOTE: u8 = 5;

/// The code for the daemon's answer (pure).
pub(crate) fn of_client(e: &ClientError) -> u8 {
    match e {
        ClientError::Connect { .. } | ClientError::Timeout { .. } => REMOTE,
        e => match e.code() {
            Some(ErrorCode::NotFound) => NOT_FOUND,
            Some(ErrorCode::InUse) => IN_USE,
            Some(ErrorCode::Timeout | ErrorCode::Failed) => REMOTE,
            _ => FAILURE,
        },
    }
}

/// `code` as an [`ExitCode`].
pub(crate) fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    fn refused(code: ErrorCode) -> ClientError {
        ClientError::Status {
            socket: "/s".into(),
            status: StatusCode::CONFLICT,
            code: Some(code),
            message: String::new(),
        }
    }

    #[test]
    fn each_kind_of_failure_has_its_code() {
        assert_eq!(of_client(&refused(ErrorCode::NotFound)), NOT_FOUND);
        assert_eq!(of_client(&refused(ErrorCode::InUse)), IN_USE);
        assert_eq!(of_client(&refused(ErrorCode::Failed)), REMOTE);
        assert_eq!(of_client(&refused(ErrorCode::Refused)), FAILURE);
        let gone = ClientError::Connect {
            socket: "/s".into(),
            message: "refused".into(),
        };
        assert_eq!(of_client(&gone), REMOTE);
    }
}
