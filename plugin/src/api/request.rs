//! VolumeDriver requests as values: pure parsing of (path, JSON body).

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Activate,
    Capabilities,
    Create {
        name: String,
        opts: BTreeMap<String, String>,
    },
    Remove {
        name: String,
    },
    Mount {
        name: String,
        id: String,
    },
    Unmount {
        name: String,
        id: String,
    },
    Path {
        name: String,
    },
    Get {
        name: String,
    },
    List,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(String),
    #[error("{endpoint}: invalid request body: {message}")]
    Body { endpoint: String, message: String },
}

#[derive(Deserialize)]
struct NameBody {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "Name")]
    name: String,
    /// docker sends `null` when no `-o` was given.
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(rename = "Name")]
    name: String,
    /// Docker before 1.12 sent no ID; those mounts share the empty ID.
    #[serde(rename = "ID", default)]
    id: String,
}

impl Request {
    /// The endpoint's name without its `VolumeDriver.` prefix (`Create`,
    /// `Mount`, ...): the metrics' `endpoint` label.
    pub(crate) fn endpoint(&self) -> &'static str {
        match self {
            Self::Activate => "Activate",
            Self::Capabilities => "Capabilities",
            Self::Create { .. } => "Create",
            Self::Remove { .. } => "Remove",
            Self::Mount { .. } => "Mount",
            Self::Unmount { .. } => "Unmount",
            Self::Path { .. } => "Path",
            Self::Get { .. } => "Get",
            Self::List => "List",
        }
    }

    pub(crate) fn parse(path: &str, body: &[u8]) -> Result<Self, ParseError> {
        fn json<'a, T: Deserialize<'a>>(endpoint: &str, body: &'a [u8]) -> Result<T, ParseError> {
            serde_json::from_slice(body).map_err(|e| ParseError::Body {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            })
        }
        let endpoint = path.trim_start_matches('/');
        Ok(match endpoint {
            "Plugin.Activate" => Self::Activate,
            "VolumeDriver.Capabilities" => Self::Capabilities,
            "VolumeDriver.List" => Self::List,
            "VolumeDriver.Create" => {
                let b: CreateBody = json(endpoint, body)?;
                Self::Create {
                    name: b.name,
                    opts: b.opts.unwrap_or_default(),
                }
            }
            "VolumeDriver.Remove" => Self::Remove {
                name: json::<NameBody>(endpoint, body)?.name,
            },
            "VolumeDriver.Path" => Self::Path {
                name: json::<NameBody>(endpoint, body)?.name,
            },
            "VolumeDriver.Get" => Self::Get {
                name: json::<NameBody>(endpoint, body)?.name,
            },
            "VolumeDriver.Mount" => {
                let b: MountBody = json(endpoint, body)?;
                Self::Mount {
                    name: b.name,
                    id: b.id,
                }
            }
            "VolumeDriver.Unmount" => {
                let b: MountBody = json(endpoint, body)?;
                Self::Unmount {
                    name: b.name,
                    id: b.id,
                }
            }
            _ => return Err(ParseError::UnknownEndpoint(path.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_endpoint() {
        let cases: Vec<(&str, &str, Request)> = vec![
            ("/Plugin.Activate", "", Request::Activate),
            ("/Plugin.Activate", "{}", Request::Activate),
            ("/VolumeDriver.Capabilities", "", Request::Capabilities),
            ("/VolumeDriver.List", "{}", Request::List),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"db@gold","Opts":null}"#,
                Request::Create {
                    name: "db@gold".into(),
                    opts: opts(&[]),
                },
            ),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"db","Opts":{"size":"20G","profile":"gold"}}"#,
                Request::Create {
                    name: "db".into(),
                    opts: opts(&[("size", "20G"), ("profile", "gold")]),
                },
            ),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"db"}"#,
                Request::Create {
                    name: "db".into(),
                    opts: opts(&[]),
                },
            ),
            (
                "/VolumeDriver.Remove",
                r#"{"Name":"db"}"#,
                Request::Remove { name: "db".into() },
            ),
            (
                "/VolumeDriver.Path",
                r#"{"Name":"db"}"#,
                Request::Path { name: "db".into() },
            ),
            (
                "/VolumeDriver.Get",
                r#"{"Name":"a@b@c"}"#,
                Request::Get {
                    name: "a@b@c".into(),
                },
            ),
            (
                "/VolumeDriver.Mount",
                r#"{"Name":"db","ID":"abc"}"#,
                Request::Mount {
                    name: "db".into(),
                    id: "abc".into(),
                },
            ),
            (
                "/VolumeDriver.Unmount",
                r#"{"Name":"db","ID":"abc"}"#,
                Request::Unmount {
                    name: "db".into(),
                    id: "abc".into(),
                },
            ),
            (
                "/VolumeDriver.Mount",
                r#"{"Name":"db"}"#,
                Request::Mount {
                    name: "db".into(),
                    id: String::new(),
                },
            ),
        ];
        for (path, body, want) in cases {
            assert_eq!(
                Request::parse(path, body.as_bytes()),
                Ok(want),
                "{path} {body}"
            );
        }
    }

    #[test]
    fn refuses_bad_requests_with_the_reason() {
        let cases = [
            (
                "/VolumeDriver.Snapshot",
                "{}",
                "unknown endpoint /VolumeDriver.Snapshot",
            ),
            (
                "/VolumeDriver.Create",
                "",
                "VolumeDriver.Create: invalid request body",
            ),
            (
                "/VolumeDriver.Create",
                r#"{"Opts":{}}"#,
                "missing field `Name`",
            ),
            (
                "/VolumeDriver.Create",
                r#"{"Name":"x","Opts":{"size":20}}"#,
                "invalid type",
            ),
            ("/VolumeDriver.Mount", r#"{"Name":7}"#, "invalid type"),
            ("/VolumeDriver.Get", "not json", "expected"),
        ];
        for (path, body, want) in cases {
            let err = Request::parse(path, body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{path} {body}: {err}");
        }
    }
}
