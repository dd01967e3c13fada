//! Access-log lines to requests: who asked (client IP, or a region the log
//! already names) and when. Pure parsers, one line at a time; the caller
//! counts and skips the lines they refuse.
//!
//! Formats: the combined log format nginx and Apache write by default (the
//! common format, without referer and user agent, is accepted too), and
//! JSON lines with configurable fields (dotted paths for nested objects).

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("empty line")]
    Empty,
    #[error("not a combined/common log line: {0}")]
    Combined(&'static str),
    #[error("not a JSON object")]
    Json,
    #[error("field {0:?} is missing or empty")]
    MissingField(String),
    #[error("time {0:?} is not a timestamp")]
    Time(String),
}

/// Where a request came from, as far as the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    Ip(IpAddr),
    /// The log names the client's region itself (JSON `region_field`).
    Region(String),
    /// A hostname or garbage where the address should be: a valid line
    /// whose client counts as "unknown".
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub client: Client,
    /// Seconds since the Unix epoch, if the line carries a time.
    pub time: Option<i64>,
}

/// How to read a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Combined,
    Json {
        /// Field holding the client IP (`"1.2.3.4"`, `"1.2.3.4:5678"`, or an
        /// X-Forwarded-For list whose first entry is the client).
        ip_field: Option<String>,
        /// Field holding the client's region name (used if present).
        region_field: Option<String>,
        /// Field holding the time: Unix seconds (or milliseconds above
        /// 1e11), RFC 3339, or the combined format's `[10/Oct/2000:...]`.
        time_field: Option<String>,
    },
}

pub fn parse(format: &LogFormat, line: &str) -> Result<Request, LineError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Err(LineError::Empty);
    }
    match format {
        LogFormat::Combined => parse_combined(line),
        LogFormat::Json {
            ip_field,
            region_field,
            time_field,
        } => parse_json(
            line,
            ip_field.as_deref(),
            region_field.as_deref(),
            time_field.as_deref(),
        ),
    }
}

/// A client address as logs write it: bare, with a port, bracketed IPv6,
/// or the first entry of an X-Forwarded-For list.
pub fn parse_client(s: &str) -> Client {
    let first = s.split(',').next().unwrap_or("").trim();
    if let Ok(ip) = first.parse::<IpAddr>() {
        return Client::Ip(ip);
    }
    if let Ok(sa) = first.parse::<SocketAddr>() {
        return Client::Ip(sa.ip());
    }
    if let Some(inner) = first.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Client::Ip(ip);
    }
    Client::Unknown
}

/// `HOST IDENT USER [TIME] "REQUEST" STATUS BYTES ["REFERER" "AGENT"]`.
fn parse_combined(line: &str) -> Result<Request, LineError> {
    use LineError::Combined as E;
    let mut rest = line.trim_start();
    let mut token = |what: &'static str| -> Result<&str, LineError> {
        let end = rest.find(' ').ok_or(E(what))?;
        let (t, r) = rest.split_at(end);
        rest = r.trim_start_matches(' ');
        Ok(t)
    };
    let host = token("no client address")?;
    let _ident = token("no ident field")?;
    // The user field may itself hold spaces only in broken logs: refuse.
    let _user = token("no user field")?;
    let after_bracket = rest.strip_prefix('[').ok_or(E("no [time]"))?;
    let close = after_bracket.find(']').ok_or(E("unterminated [time]"))?;
    let time = parse_time(&after_bracket[..close])
        .map_err(|_| E("time is not dd/Mon/yyyy:HH:MM:SS +zzzz"))?;
    let rest = after_bracket[close + 1..].trim_start();
    let rest = skip_quoted(rest)
        .ok_or(E("no quoted request"))?
        .trim_start();
    let mut fields = rest.split(' ').filter(|s| !s.is_empty());
    let status = fields.next().ok_or(E("no status"))?;
    if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return Err(E("status is not three digits"));
    }
    let bytes = fields.next().ok_or(E("no byte count"))?;
    if bytes != "-" && !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return Err(E("byte count is not a number or -"));
    }
    Ok(Request {
        client: parse_client(host),
        time: Some(time),
    })
}

/// Skips a `"..."` field with backslash escapes; returns what follows.
fn skip_quoted(s: &str) -> Option<&str> {
    let body = s.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(&body[i + 1..]),
            _ => {}
        }
    }
    None
}

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn parse_json(
    line: &str,
    ip_field: Option<&str>,
    region_field: Option<&str>,
    time_field: Option<&str>,
) -> Result<Request, LineError> {
    let v: Value = serde_json::from_str(line).map_err(|_| LineError::Json)?;
    if !v.is_object() {
        return Err(LineError::Json);
    }
    let text = |f: &str| {
        field(&v, f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let client = match (region_field.and_then(text), ip_field.and_then(text)) {
        (Some(region), _) => Client::Region(region.to_owned()),
        (None, Some(ip)) => parse_client(ip),
        (None, None) => {
            let name = region_field.or(ip_field).unwrap_or("(no field configured)");
            return Err(LineError::MissingField(name.to_owned()));
        }
    };
    let time = match time_field {
        None => None,
        Some(f) => Some(match field(&v, f) {
            Some(Value::Number(n)) => {
                let x = n.as_f64().ok_or_else(|| LineError::Time(n.to_string()))?;
                // Above 1e11 seconds is the year 5138: it is milliseconds.
                let secs = if x > 1e11 { x / 1000.0 } else { x };
                if !(0.0..1e11).contains(&secs) {
                    return Err(LineError::Time(n.to_string()));
                }
                crate::f64_to_i64(secs)
            }
            Some(Value::String(s)) => parse_time(s)?,
            _ => return Err(LineError::MissingField(f.to_owned())),
        }),
    };
    Ok(Request { client, time })
}

/// Seconds since the epoch of a proleptic Gregorian date (Howard Hinnant's
/// days-from-civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str, lo: i64, hi: i64) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|v| (lo..=hi).contains(v))
}

/// `10/Oct/2000:13:55:36 -0700` (combined) or RFC 3339
/// (`2000-10-10T20:55:36Z`, fractions and `+hh:mm` offsets allowed).
pub fn parse_time(s: &str) -> Result<i64, LineError> {
    let bad = || LineError::Time(s.to_owned());
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let (date, time, offset_s) = if s.as_bytes().get(2) == Some(&b'/') {
        // dd/Mon/yyyy:HH:MM:SS +zzzz
        let (dt, zone) = s.split_once(' ').ok_or_else(bad)?;
        let (d, t) = dt.split_once(':').ok_or_else(bad)?;
        let mut p = d.split('/');
        let day = num(p.next().ok_or_else(bad)?, 1, 31).ok_or_else(bad)?;
        let mon = p.next().ok_or_else(bad)?;
        let month0 = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|m| *m == mon)
        .ok_or_else(bad)?;
        let month = i64::try_from(month0).expect("an index into 12 months") + 1;
        let year = num(p.next().ok_or_else(bad)?, 1970, 9999).ok_or_else(bad)?;
        let sign = match zone.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        let z = &zone[1..];
        if z.len() != 4 {
            return Err(bad());
        }
        let off = sign
            * (num(&z[..2], 0, 23).ok_or_else(bad)? * 3600
                + num(&z[2..], 0, 59).ok_or_else(bad)? * 60);
        ((year, month, day), t.to_owned(), off)
    } else {
        // yyyy-mm-ddTHH:MM:SS[.fff](Z|+hh:mm)
        let (d, rest) = s.split_at_checked(10).ok_or_else(bad)?;
        let mut p = d.split('-');
        let year = num(p.next().ok_or_else(bad)?, 1970, 9999).ok_or_else(bad)?;
        let month = num(p.next().ok_or_else(bad)?, 1, 12).ok_or_else(bad)?;
        let day = num(p.next().ok_or_else(bad)?, 1, 31).ok_or_else(bad)?;
        let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
        let (t, off) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
            (t, 0)
        } else {
            let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
            let (t, z) = rest.split_at(at);
            let sign = if z.starts_with('+') { 1 } else { -1 };
            let (h, m) = z[1..].split_once(':').ok_or_else(bad)?;
            (
                t,
                sign * (num(h, 0, 23).ok_or_else(bad)? * 3600
                    + num(m, 0, 59).ok_or_else(bad)? * 60),
            )
        };
        // Fractions of a second do not matter at the rates' time scale.
        let t = t.split('.').next().unwrap_or(t);
        ((year, month, day), t.to_owned(), off)
    };
    let mut hms = time.split(':');
    let h = num(hms.next().ok_or_else(bad)?, 0, 23).ok_or_else(bad)?;
    let m = num(hms.next().ok_or_else(bad)?, 0, 59).ok_or_else(bad)?;
    let sec = num(hms.next().ok_or_else(bad)?, 0, 60).ok_or_else(bad)?;
    if hms.next().is_some() {
        return Err(bad());
    }
    let (y, mo, d) = date;
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + m * 60 + sec - offset_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Client {
        Client::Ip(s.parse().unwrap())
    }

    #[test]
    fn combined_lines() {
        // 2000-10-10T20:55:36Z
        const T: i64 = 971_211_336;
        let ok = [
            (
                r#"203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://example.com/" "Mozilla/4.08 [en] (Win98; I ;Nav)""#,
                ip("203.0.113.9"),
            ),
            // common format, no referer/agent
            (
                r#"198.51.100.7 - - [10/Oct/2000:20:55:36 +0000] "GET / HTTP/1.1" 304 -"#,
                ip("198.51.100.7"),
            ),
            // IPv6, escaped quote in the request
            (
                r#"2001:db8::1 - - [10/Oct/2000:22:55:36 +0200] "GET /\"x\" HTTP/1.1" 404 12 "-" "curl/8""#,
                ip("2001:db8::1"),
            ),
            // HostnameLookups on: a valid line with an unknown client
            (
                r#"client.example.com - - [10/Oct/2000:20:55:36 +0000] "GET / HTTP/1.1" 200 1 "-" "-""#,
                Client::Unknown,
            ),
        ];
        for (line, client) in ok {
            let r = parse(&LogFormat::Combined, line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.client, client, "{line}");
            assert_eq!(r.time, Some(T), "{line}");
        }
        let bad = [
            "",
            "   ",
            "garbage",
            r#"1.2.3.4 - - 10/Oct/2000:20:55:36 +0000 "GET /" 200 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:20:55:36 +0000 "GET /" 200 1"#,
            r#"1.2.3.4 - - [10/Foo/2000:20:55:36 +0000] "GET /" 200 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:25:55:36 +0000] "GET /" 200 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:20:55:36 +0000] "GET / 200 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:20:55:36 +0000] "GET /" 2x0 1"#,
            r#"1.2.3.4 - - [10/Oct/2000:20:55:36 +0000] "GET /" 200 lots"#,
            r#"1.2.3.4 - - [10/Oct/2000:20:55:36 +0000] "GET /""#,
        ];
        for line in bad {
            assert!(
                parse(&LogFormat::Combined, line).is_err(),
                "{line:?} parsed"
            );
        }
    }

    #[test]
    fn json_lines() {
        let f = LogFormat::Json {
            ip_field: Some("client.ip".into()),
            region_field: Some("region".into()),
            time_field: Some("ts".into()),
        };
        let cases = [
            (
                r#"{"client":{"ip":"192.0.2.1"},"ts":971211336}"#,
                ip("192.0.2.1"),
                Some(971_211_336),
            ),
            (
                r#"{"client":{"ip":"192.0.2.1:443"},"ts":971211336000}"#,
                ip("192.0.2.1"),
                Some(971_211_336),
            ),
            (
                r#"{"client":{"ip":"[2001:db8::2]:80"},"ts":"2000-10-10T20:55:36Z"}"#,
                ip("2001:db8::2"),
                Some(971_211_336),
            ),
            (
                r#"{"client":{"ip":"198.51.100.3, 10.0.0.1"},"ts":"2000-10-10T22:55:36.5+02:00"}"#,
                ip("198.51.100.3"),
                Some(971_211_336),
            ),
            (
                r#"{"region":"eu-west-1","client":{"ip":"192.0.2.1"},"ts":"10/Oct/2000:20:55:36 +0000"}"#,
                Client::Region("eu-west-1".into()),
                Some(971_211_336),
            ),
            (
                r#"{"client":{"ip":"not-an-ip"},"ts":0}"#,
                Client::Unknown,
                Some(0),
            ),
        ];
        for (line, client, time) in cases {
            let r = parse(&f, line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!((r.client, r.time), (client, time), "{line}");
        }
        for (line, err) in [
            ("[1,2]", LineError::Json),
            ("{not json", LineError::Json),
            (r#"{"ts":1}"#, LineError::MissingField("region".into())),
            (
                r#"{"client":{"ip":""},"ts":1}"#,
                LineError::MissingField("region".into()),
            ),
            (
                r#"{"client":{"ip":"192.0.2.1"}}"#,
                LineError::MissingField("ts".into()),
            ),
            (
                r#"{"client":{"ip":"192.0.2.1"},"ts":"yesterday"}"#,
                LineError::Time("yesterday".into()),
            ),
            (
                r#"{"client":{"ip":"192.0.2.1"},"ts":-5}"#,
                LineError::Time("-5".into()),
            ),
        ] {
            assert_eq!(parse(&f, line).unwrap_err(), err, "{line}");
        }
        // No time field configured: no time.
        let f = LogFormat::Json {
            ip_field: Some("ip".into()),
            region_field: None,
            time_field: None,
        };
        assert_eq!(parse(&f, r#"{"ip":"192.0.2.9"}"#).unwrap().time, None);
    }

    #[test]
    fn times() {
        for (s, want) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-12-01T15:27:29Z", 1_796_138_849),
            ("2024-02-29 12:00:00+00:00", 1_709_208_000),
            ("01/Jan/1970:01:00:00 +0100", 0),
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        for s in [
            "2026-13-01T00:00:00Z",
            "2026-12-01",
            "2026-12-01T00:00Z",
            "1/Jan/1970:00:00:00",
            "01/Jan/1970:00:00:00 0100",
        ] {
            assert!(parse_time(s).is_err(), "{s}");
        }
    }
}
