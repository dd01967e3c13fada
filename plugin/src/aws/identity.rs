//! Who this host is on EC2: its instance id (AttachVolume's target) and its
//! availability zone (where CreateVolume puts volumes, since EBS volumes
//! attach only within their zone). From the config when set there (tests, or
//! hosts without IMDS), else from the instance metadata service (IMDSv2).

use std::time::Duration;

/// IMDS answers locally in milliseconds; 2 s per try with 3 tries (the
/// client's own retry, IMDS being no AWS API) bounds a host without IMDS to a
/// few seconds at start, with a clear error.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
const IMDS_ATTEMPTS: u32 = 3;

/// This host's place in EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) instance_id: String,
    pub(crate) zone: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error(
        "cannot read {what} from the EC2 instance metadata service ({message}); \
         on a host without IMDS set [aws] instance_id and availability_zone in the config"
    )]
    Imds { what: &'static str, message: String },
    #[error("cannot start the IMDS client runtime: {0}")]
    Runtime(std::io::Error),
}

/// The identity from `instance_id`/`zone` when both are given, else IMDS
/// fills in what is missing.
pub(crate) fn resolve(
    instance_id: Option<&str>,
    zone: Option<&str>,
) -> Result<Identity, IdentityError> {
    if let (Some(i), Some(z)) = (instance_id, zone) {
        return Ok(Identity {
            instance_id: i.to_owned(),
            zone: z.to_owned(),
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IdentityError::Runtime)?;
    let client = aws_config::imds::Client::builder()
        .connect_timeout(IMDS_TIMEOUT)
        .read_timeout(IMDS_TIMEOUT)
        .max_attempts(IMDS_ATTEMPTS)
        .build();
    let get = |what: &'static str, path: &'static str| {
        rt.block_on(client.get(path))
            .map(|s| s.as_ref().trim().to_owned())
            .map_err(|e| IdentityError::Imds {
                what,
                message: e.to_string(),
            })
    };
    let instance_id = match instance_id {
        Some(i) => i.to_owned(),
        None => get("the instance id", "/latest/meta-data/instance-id")?,
    };
    let zone = match zone {
        Some(z) => z.to_owned(),
        None => get(
            "the availability zone",
            "/latest/meta-data/placement/availability-zone",
        )?,
    };
    Ok(Identity { instance_id, zone })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_need_no_imds() {
        let id = resolve(Some("i-0abc"), Some("eu-west-3a")).unwrap();
        assert_eq!(
            id,
            Identity {
                instance_id: "i-0abc".into(),
                zone: "eu-west-3a".into()
            }
        );
    }
}
