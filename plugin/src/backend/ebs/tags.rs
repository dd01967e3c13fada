//! The tags daffe puts on EBS volumes, and what it reads back from them:
//! AWS is the source of truth for which volumes exist, so a host can find a
//! volume by NAME after a crash and rebuild its records from AWS if its
//! store is lost (or a volume arrives from another zone).
//!
//! | tag | value |
//! |---|---|
//! | `daffe:cluster` | the cluster (config `[aws] cluster`): NAMEs are unique within it |
//! | `daffe:host` | instance id of the host that owns the volume; absent on a volume nobody has claimed yet (made by `migrate --via-ebs`) |
//! | `daffe:name` | NAME |
//! | `daffe:profile` | the profile |
//! | `daffe:docker-name` | the docker name it was created with (`db@gold`) |
//! | `daffe:created` | creation time, seconds since the epoch |
//! | `daffe:state` | absent while in use; `released` when docker removed it but the profile keeps EBS volumes; `fenced:ZONE` during a cutover to ZONE; `moved:ZONE:VOLUME` once moved |
//! | `daffe:migrated-from` | on a migrated copy: the source volume id |
//! | `Name` | `daffe/NAME`, for the AWS console |
//!
//! A host owns the volumes of its cluster in its zone whose `daffe:host` is
//! its instance id; it claims those without a `daffe:host` (sets it) when it
//! rebuilds. Volumes with a `daffe:state` are never rebuilt: they are gone
//! (released) or belong elsewhere (fenced, moved).

use crate::aws::{Filter, VolumeFacts};
use profiles::EbsSettings;
use std::collections::BTreeMap;

pub(crate) const CLUSTER: &str = "daffe:cluster";
pub(crate) const HOST: &str = "daffe:host";
pub(crate) const NAME: &str = "daffe:name";
pub(crate) const PROFILE: &str = "daffe:profile";
pub(crate) const DOCKER_NAME: &str = "daffe:docker-name";
pub(crate) const CREATED: &str = "daffe:created";
pub(crate) const STATE: &str = "daffe:state";
pub(crate) const MIGRATED_FROM: &str = "daffe:migrated-from";
pub(crate) const CONSOLE_NAME: &str = "Name";

/// AWS's limit on a tag value's length.
const MAX_VALUE: usize = 256;

/// What `daffe:state` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TagState {
    Released,
    Fenced {
        zone: String,
    },
    Moved {
        zone: String,
        volume_id: String,
    },
    /// A value this version does not know: treated as "not ours to use".
    Other(String),
}

impl TagState {
    pub(crate) fn parse(v: &str) -> Self {
        if v == "released" {
            return Self::Released;
        }
        if let Some(zone) = v.strip_prefix("fenced:") {
            return Self::Fenced { zone: zone.into() };
        }
        if let Some((zone, vol)) = v.strip_prefix("moved:").and_then(|r| r.split_once(':')) {
            return Self::Moved {
                zone: zone.into(),
                volume_id: vol.into(),
            };
        }
        Self::Other(v.into())
    }

    pub(crate) fn value(&self) -> String {
        match self {
            Self::Released => "released".into(),
            Self::Fenced { zone } => format!("fenced:{zone}"),
            Self::Moved { zone, volume_id } => format!("moved:{zone}:{volume_id}"),
            Self::Other(v) => v.clone(),
        }
    }

    /// Why a volume in this state cannot be mounted here.
    pub(crate) fn refusal(&self) -> String {
        match self {
            Self::Released => "it was released (removed from docker, kept in EBS)".into(),
            Self::Fenced { zone } => format!("it is being moved to {zone}"),
            Self::Moved { zone, volume_id } => format!("it was moved to {zone} as {volume_id}"),
            Self::Other(v) => format!("its daffe:state tag is {v:?}"),
        }
    }
}

/// Who is asking: the host's cluster, instance and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) cluster: String,
    pub(crate) instance_id: String,
    pub(crate) zone: String,
}

fn clip(v: &str) -> String {
    v.chars().take(MAX_VALUE).collect()
}

/// Tags of a new volume. `owner`: the host's instance id, or `None` for a
/// volume left for a host of its zone to claim.
pub(crate) fn for_new(
    cluster: &str,
    owner: Option<&str>,
    name: &str,
    profile: &str,
    docker_name: &str,
    created: u64,
) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    t.insert(CLUSTER.into(), clip(cluster));
    if let Some(o) = owner {
        t.insert(HOST.into(), clip(o));
    }
    t.insert(NAME.into(), clip(name));
    t.insert(PROFILE.into(), clip(profile));
    t.insert(DOCKER_NAME.into(), clip(docker_name));
    t.insert(CREATED.into(), created.to_string());
    t.insert(CONSOLE_NAME.into(), clip(&format!("daffe/{name}")));
    t
}

/// DescribeVolumes filters for the volumes named `name` in the scope's
/// cluster and zone.
pub(crate) fn by_name(scope: &Scope, name: &str) -> Vec<Filter> {
    vec![
        (format!("tag:{CLUSTER}"), vec![scope.cluster.clone()]),
        (format!("tag:{NAME}"), vec![name.to_owned()]),
        ("availability-zone".into(), vec![scope.zone.clone()]),
    ]
}

/// DescribeVolumes filters for every volume of the scope's cluster and zone.
pub(crate) fn in_scope(scope: &Scope) -> Vec<Filter> {
    vec![
        (format!("tag:{CLUSTER}"), vec![scope.cluster.clone()]),
        ("availability-zone".into(), vec![scope.zone.clone()]),
    ]
}

pub(crate) fn state_of(v: &VolumeFacts) -> Option<TagState> {
    v.tag(STATE).map(TagState::parse)
}

/// Whether this host may use `v`: not released, owned by this host or
/// unclaimed (a released volume was given up, and another host's volume is
/// not ours even in our zone), and not being deleted.
fn usable_here(scope: &Scope, v: &VolumeFacts) -> bool {
    state_of(v) != Some(TagState::Released)
        && v.tag(HOST).is_none_or(|h| h == scope.instance_id)
        && !matches!(v.state.as_str(), "deleting" | "deleted")
}

/// Whether `v` is the volume this host uses for `name`, as the tag search
/// and [`pick`] would take it: this name, cluster and zone, and usable
/// here. A volume reached by an id (a cached one, or one a create record
/// saved) must pass this too: it may have moved to another host since.
pub(crate) fn is_ours(scope: &Scope, name: &str, v: &VolumeFacts) -> bool {
    v.tag(NAME) == Some(name)
        && v.tag(CLUSTER) == Some(scope.cluster.as_str())
        && v.zone == scope.zone
        && usable_here(scope, v)
}

/// Of the volumes found by name, the one this host uses (see
/// [`usable_here`]); more than one is an error the operator must settle.
pub(crate) fn pick<'a>(
    scope: &Scope,
    found: &'a [VolumeFacts],
) -> Result<Option<&'a VolumeFacts>, Vec<&'a VolumeFacts>> {
    let mine: Vec<&VolumeFacts> = found.iter().filter(|v| usable_here(scope, v)).collect();
    match mine.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(mine),
    }
}

/// A volume AWS has that a host may hold a record for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) volume_id: String,
    pub(crate) name: String,
    pub(crate) profile: String,
    pub(crate) docker_name: String,
    pub(crate) created: Option<u64>,
    /// No `daffe:host` yet: the host claims it when it takes it.
    pub(crate) unclaimed: bool,
    pub(crate) facts: VolumeFacts,
}

/// Why a volume in scope is not one to rebuild, or what it is.
pub(crate) fn classify(scope: &Scope, v: &VolumeFacts) -> Result<Found, String> {
    let name = v.tag(NAME).ok_or("no daffe:name tag")?;
    if let Some(s) = state_of(v) {
        return Err(format!("not in use here: {}", s.refusal()));
    }
    match v.tag(HOST) {
        Some(h) if h != scope.instance_id => return Err(format!("owned by host {h}")),
        _ => {}
    }
    if let Some(a) = v.attachment_elsewhere(&scope.instance_id) {
        return Err(format!("attached to instance {}", a.instance_id));
    }
    if matches!(v.state.as_str(), "deleting" | "deleted" | "error") {
        return Err(format!("volume state {}", v.state));
    }
    let profile = v.tag(PROFILE).unwrap_or(profiles::DEFAULT_PROFILE);
    Ok(Found {
        volume_id: v.id.clone(),
        name: name.to_owned(),
        profile: profile.to_owned(),
        docker_name: v
            .tag(DOCKER_NAME)
            .map_or_else(|| format!("{name}@{profile}"), str::to_owned),
        created: v.tag(CREATED).and_then(|c| c.parse().ok()),
        unclaimed: v.tag(HOST).is_none(),
        facts: v.clone(),
    })
}

/// The settings a record holds for an existing volume, read from the volume
/// itself (the truth, whatever its profile says today). gp3 at its baseline
/// reads as "AWS's default", as a profile without IOPS/throughput resolves.
pub(crate) fn settings_of(v: &VolumeFacts, keep_on_remove: bool) -> Option<EbsSettings> {
    let ty = crate::aws::ec2::parse_volume_type(&v.volume_type)?;
    let lim = ty.limits();
    let baseline_iops = lim.iops.and_then(|l| l.baseline);
    let baseline_tp = lim.throughput.map(|t| t.baseline);
    let iops = match lim.iops {
        None => None,
        Some(_) => v.iops.filter(|i| Some(*i) != baseline_iops),
    };
    let throughput = match lim.throughput {
        None => None,
        Some(_) => v.throughput.filter(|t| Some(*t) != baseline_tp),
    };
    Some(EbsSettings {
        volume_type: ty,
        size_gib: v.size_gib,
        iops,
        throughput,
        encrypted: v.encrypted,
        kms_key_id: v.kms_key_id.clone(),
        keep_on_remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            cluster: "c1".into(),
            instance_id: "i-me".into(),
            zone: "us-east-1a".into(),
        }
    }

    fn vol(id: &str, tags: &[(&str, &str)]) -> VolumeFacts {
        VolumeFacts {
            id: id.into(),
            zone: "us-east-1a".into(),
            size_gib: 10,
            volume_type: "gp3".into(),
            iops: Some(3_000),
            throughput: Some(125),
            state: "available".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..VolumeFacts::default()
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [
            TagState::Released,
            TagState::Fenced {
                zone: "us-east-1b".into(),
            },
            TagState::Moved {
                zone: "us-east-1b".into(),
                volume_id: "vol-9".into(),
            },
        ] {
            assert_eq!(TagState::parse(&s.value()), s);
        }
        assert!(matches!(TagState::parse("weird"), TagState::Other(_)));
    }

    #[test]
    fn new_volume_tags_carry_name_profile_and_owner() {
        let t = for_new("c1", Some("i-me"), "db", "gold", "db@gold", 7);
        assert_eq!(t[CLUSTER], "c1");
        assert_eq!(t[HOST], "i-me");
        assert_eq!((t[NAME].as_str(), t[PROFILE].as_str()), ("db", "gold"));
        assert_eq!(t[DOCKER_NAME], "db@gold");
        assert_eq!(t[CREATED], "7");
        assert_eq!(t[CONSOLE_NAME], "daffe/db");
        assert!(!for_new("c1", None, "db", "gold", "db@gold", 7).contains_key(HOST));
    }

    #[test]
    fn classification_for_rebuild() {
        let s = scope();
        let mine = vol("v1", &[(NAME, "a"), (HOST, "i-me"), (PROFILE, "gold")]);
        let f = classify(&s, &mine).unwrap();
        assert_eq!((f.name.as_str(), f.profile.as_str()), ("a", "gold"));
        assert_eq!(f.docker_name, "a@gold");
        assert!(!f.unclaimed);
        let unclaimed = vol("v2", &[(NAME, "b")]);
        let f = classify(&s, &unclaimed).unwrap();
        assert!(f.unclaimed);
        assert_eq!(f.profile, "default");
        let cases = [
            (vol("v3", &[(HOST, "i-me")]), "no daffe:name"),
            (
                vol("v4", &[(NAME, "c"), (HOST, "i-other")]),
                "owned by host i-other",
            ),
            (vol("v5", &[(NAME, "d"), (STATE, "released")]), "released"),
            (
                vol("v6", &[(NAME, "e"), (STATE, "moved:us-east-1b:vol-7")]),
                "moved to us-east-1b",
            ),
        ];
        for (v, want) in cases {
            let e = classify(&s, &v).unwrap_err();
            assert!(e.contains(want), "{}: {e}", v.id);
        }
        let mut attached = vol("v8", &[(NAME, "f")]);
        attached.attachments.push(crate::aws::ec2::AttachmentFacts {
            instance_id: "i-other".into(),
            device: "/dev/sdf".into(),
            state: "attached".into(),
        });
        assert!(
            classify(&s, &attached)
                .unwrap_err()
                .contains("attached to instance i-other")
        );
    }

    #[test]
    fn pick_prefers_live_volumes_of_this_host() {
        let s = scope();
        let found = vec![
            vol("old", &[(NAME, "a"), (HOST, "i-me"), (STATE, "released")]),
            vol("theirs", &[(NAME, "a"), (HOST, "i-other")]),
            vol("live", &[(NAME, "a"), (HOST, "i-me")]),
        ];
        assert_eq!(pick(&s, &found).unwrap().unwrap().id, "live");
        assert!(pick(&s, &found[..2]).unwrap().is_none());
        let two = vec![vol("x", &[(NAME, "a")]), vol("y", &[(NAME, "a")])];
        assert_eq!(pick(&s, &two).unwrap_err().len(), 2);
    }

    /// What a volume reached by id (a cached one, a create record's) must
    /// be for this host to use it as `a`: one row per way it is not.
    #[test]
    fn is_ours_takes_only_what_the_tag_search_would() {
        let s = scope();
        let mine = [(NAME, "a"), (CLUSTER, "c1"), (HOST, "i-me")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut t: Vec<(&str, &str)> = mine.to_vec();
            for (k, v) in extra {
                t.retain(|(tk, _)| tk != k);
                t.push((k, v));
            }
            vol("v", &t)
        };
        let mut other_zone = with(&[]);
        other_zone.zone = "us-east-1b".into();
        let mut deleting = with(&[]);
        deleting.state = "deleting".into();
        let unclaimed = vol("v", &[(NAME, "a"), (CLUSTER, "c1")]);
        for (v, ours, why) in [
            (with(&[]), true, "this host's"),
            (unclaimed, true, "unclaimed, in scope"),
            (with(&[(NAME, "b")]), false, "another name"),
            (with(&[(CLUSTER, "c2")]), false, "another cluster"),
            (other_zone, false, "another zone"),
            (with(&[(HOST, "i-other")]), false, "another host's"),
            (with(&[(STATE, "released")]), false, "released"),
            (deleting, false, "being deleted"),
        ] {
            assert_eq!(is_ours(&s, "a", &v), ours, "{why}");
        }
    }

    #[test]
    fn settings_read_back_from_a_volume() {
        let v = vol("v", &[]);
        let s = settings_of(&v, false).unwrap();
        assert_eq!((s.iops, s.throughput), (None, None), "gp3 baseline");
        let mut io2 = vol("w", &[]);
        io2.volume_type = "io2".into();
        io2.iops = Some(300);
        io2.throughput = None;
        io2.encrypted = true;
        let s = settings_of(&io2, true).unwrap();
        assert_eq!(s.iops, Some(300));
        assert!(s.encrypted && s.keep_on_remove);
        let mut odd = vol("z", &[]);
        odd.volume_type = "io9".into();
        assert!(settings_of(&odd, false).is_none());
    }
}
