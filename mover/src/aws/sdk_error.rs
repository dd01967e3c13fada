//! Turning SDK errors into `ApiError`s: the AWS error code (or the HTTP status
//! when the reply had none, as moto's HTML 500 pages do) and the retry kind the
//! one retry layer acts on. Generic over the operation's error, so the EBS
//! and the EC2 clients share it. Missing credentials are permanent: the chain
//! that found none will find none on a retry either, so the operator hears it
//! at once.

use super::ApiError;
use crate::retry::ErrorKind;
use aws_credential_types::provider::error::CredentialsError;
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
        SdkError::DispatchFailure(_) if credentials_unusable(&err) => {
            ApiError::new(op, ErrorKind::Permanent, "NoCredentials", message)
        }
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

/// Whether `err` comes from a credential chain that found no credentials or
/// has a configuration that cannot work (the SDK reports both as a dispatch
/// failure, before any request is sent). A provider that timed out or failed
/// (IMDS busy, STS 5xx) is not this: it may succeed on a retry.
fn credentials_unusable(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return matches!(
                c,
                CredentialsError::CredentialsNotLoaded(_)
                    | CredentialsError::InvalidConfiguration(_)
            );
        }
        next = e.source();
    }
    false
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

    /// A real EBS client whose credential chain finds nothing (as with no
    /// env, no profile and no instance role) fails before sending anything;
    /// the error must be permanent, or the retry layer spends ~40 s on it.
    /// A provider that fails for a passing reason stays retryable.
    #[test]
    fn missing_credentials_are_permanent_and_a_failing_provider_is_not() {
        use aws_credential_types::provider::{ProvideCredentials, future};
        #[derive(Debug)]
        struct Chain(fn() -> CredentialsError);
        impl ProvideCredentials for Chain {
            fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                future::ProvideCredentials::ready(Err((self.0)()))
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let call = |chain: Chain| {
            let conf = aws_sdk_ebs::Config::builder()
                .behavior_version(aws_sdk_ebs::config::BehaviorVersion::latest())
                .region(aws_sdk_ebs::config::Region::new("us-east-1"))
                // Nothing listens here, and nothing must be sent anyway.
                .endpoint_url("http://127.0.0.1:9")
                .credentials_provider(chain)
                .build();
            let client = aws_sdk_ebs::Client::from_conf(conf);
            let err = rt
                .block_on(client.start_snapshot().volume_size(1).send())
                .unwrap_err();
            from_sdk_error("StartSnapshot", err)
        };
        let none = call(Chain(|| {
            CredentialsError::not_loaded("no credentials found in chain")
        }));
        assert_eq!(none.kind, ErrorKind::Permanent, "{none}");
        assert_eq!(none.code, "NoCredentials");
        let flaky = call(Chain(|| {
            CredentialsError::provider_error("IMDS answered 503")
        }));
        assert_eq!(flaky.kind, ErrorKind::Transient, "{flaky}");
    }
}
