//! Turning SDK errors into `ApiError`s: the AWS error code (or the HTTP status
//! when the reply had none, as moto's HTML 500 pages do) and the retry kind the
//! one retry layer acts on. Generic over the operation's error, so the EBS
//! and the EC2 clients share it.

use super::ApiError;
use crate::retry::ErrorKind;
use aws_sdk_ebs::config::http::HttpResponse;
use aws_sdk_ebs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Codes AWS uses for "slow down" across EBS, EC2 and the general SDK.
const THROTTLE_CODES: &[&str] = &[
    "RequestThrottledException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ConcurrentLimitExceededException",
    "SlowDown",
];

/// Codes for a server-side failure worth retrying.
const TRANSIENT_CODES: &[&str] = &[
    "InternalServerException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Codes for "does not exist (yet)": retried only for a resource just created.
const NOT_FOUND_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "InvalidSnapshot.NotFound",
    "InvalidVolume.NotFound",
];

/// Longest error text kept from the SDK: enough for AWS's message, not for a
/// dumped HTML page.
const MAX_MESSAGE: usize = 300;

/// The retry kind of an AWS error code and HTTP status.
pub fn classify_code(code: &str, status: u16) -> ErrorKind {
    if THROTTLE_CODES.contains(&code) || status == 429 {
        ErrorKind::Throttled
    } else if NOT_FOUND_CODES.contains(&code) {
        ErrorKind::NotFound
    } else if TRANSIENT_CODES.contains(&code) || status >= 500 {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    }
}

/// Converts an SDK error of operation `op`.
pub fn from_sdk_error<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut message = DisplayErrorContext(&err).to_string();
    if message.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE)
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        message.truncate(cut);
        message.push_str("...");
    }
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = err
                .code()
                .map_or_else(|| format!("HTTP {status}"), str::to_owned);
            let message = err.message().map_or(message, str::to_owned);
            ApiError::new(op, classify_code(&code, status), code, message)
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            // An unreadable reply: retry unless the status says the request was bad.
            let kind = match classify_code("", status) {
                ErrorKind::Permanent if status >= 300 => ErrorKind::Permanent,
                ErrorKind::Permanent => ErrorKind::Transient,
                k => k,
            };
            // The SDK's text here embeds the whole raw reply; keep it short.
            ApiError::new(
                op,
                kind,
                format!("HTTP {status}"),
                format!("unreadable reply with status {status}"),
            )
        }
        SdkError::TimeoutError(_) => ApiError::new(op, ErrorKind::Transient, "Timeout", message),
        SdkError::DispatchFailure(df) => {
            let kind = if df.is_user() {
                ErrorKind::Permanent
            } else {
                ErrorKind::Transient
            };
            ApiError::new(op, kind, "DispatchFailure", message)
        }
        _ => ApiError::new(op, ErrorKind::Permanent, "ClientError", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_map_to_retry_kinds() {
        let cases = [
            ("RequestThrottledException", 400, ErrorKind::Throttled),
            ("ThrottlingException", 400, ErrorKind::Throttled),
            ("RequestLimitExceeded", 503, ErrorKind::Throttled),
            ("", 429, ErrorKind::Throttled),
            ("InternalServerException", 500, ErrorKind::Transient),
            ("HTTP 500", 500, ErrorKind::Transient),
            ("HTTP 503", 503, ErrorKind::Transient),
            ("ResourceNotFoundException", 404, ErrorKind::NotFound),
            ("ValidationException", 400, ErrorKind::Permanent),
            ("AccessDeniedException", 403, ErrorKind::Permanent),
        ];
        for (code, status, kind) in cases {
            assert_eq!(classify_code(code, status), kind, "{code} {status}");
        }
    }
}
