//! SDK configuration for every AWS client daffe makes (EBS here; EC2 for the
//! EBS backend): the standard chain (env, profile, IMDS) for credentials and
//! region, with `--region`/`--endpoint-url` overrides; a timeout on every call;
//! and the SDK's own retries turned off, because `crate::retry` is the one
//! retry layer (two layers would multiply attempts: 3 SDK tries x 10 ours).

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::time::Duration;

/// TCP+TLS connect. A regional endpoint answers in well under a second; 10 s
/// tolerates a congested path but fails fast on a black-holed route.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response. EBS answers a 512 KiB block
/// request in tens of milliseconds; 30 s means the connection is dead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole call, connect to last byte. A 512 KiB block at a poor 20 KiB/s takes
/// ~26 s; 60 s leaves room and still bounds a hung call. With the SDK's retries
/// off, one attempt is the whole operation.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Overrides on top of the standard chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsOptions {
    /// Region; `None`: AWS_REGION / profile / IMDS.
    pub region: Option<String>,
    /// Endpoint for every service (e.g. a moto server); `None`: AWS's, or
    /// AWS_ENDPOINT_URL(_EBS) from the environment.
    pub endpoint_url: Option<String>,
    /// Per-call timeout; `None`: [`CALL_TIMEOUT`].
    pub call_timeout: Option<Duration>,
}

crate::builder::setters!(AwsOptions {
    with_region => region: Option<String>,
    with_endpoint_url => endpoint_url: Option<String>,
    with_call_timeout => call_timeout: Option<Duration>,
});

#[derive(Debug, thiserror::Error)]
/// Errors setting up the AWS SDK client.
pub enum AwsConfigError {
    /// No region in the options, the environment or the profile.
    #[error(
        "no AWS region: set --region, AWS_REGION, or a region in the AWS profile (or run on EC2)"
    )]
    NoRegion,
    /// The SDK's async runtime could not start.
    #[error("cannot start the AWS client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The timeouts every call gets.
pub fn timeouts(opts: &AwsOptions) -> TimeoutConfig {
    let call = opts.call_timeout.unwrap_or(CALL_TIMEOUT);
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(call))
        .read_timeout(READ_TIMEOUT.min(call))
        .operation_attempt_timeout(call)
        .operation_timeout(call)
        .build()
}

/// Loads the SDK config: standard chain, our overrides, timeouts, no SDK retries.
/// Fails if no region can be found (the SDK would fail on every call instead).
pub async fn load_sdk_config(opts: &AwsOptions) -> Result<SdkConfig, AwsConfigError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(opts));
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsConfigError::NoRegion);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_has_a_timeout() {
        let t = timeouts(&AwsOptions::default());
        assert_eq!(t.operation_timeout(), Some(CALL_TIMEOUT));
        assert_eq!(t.operation_attempt_timeout(), Some(CALL_TIMEOUT));
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
        let short = timeouts(&AwsOptions {
            call_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        });
        assert_eq!(short.read_timeout(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn sdk_retries_are_off_and_overrides_apply() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = rt
            .block_on(load_sdk_config(&AwsOptions {
                region: Some("eu-west-3".into()),
                endpoint_url: Some("http://127.0.0.1:9".into()),
                call_timeout: None,
            }))
            .unwrap();
        assert_eq!(cfg.region().map(|r| r.as_ref()), Some("eu-west-3"));
        assert_eq!(cfg.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(cfg.retry_config().map(|r| r.max_attempts()), Some(1));
    }
}
