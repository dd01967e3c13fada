//! Durations on the command line: `2s`, `1.5s`, `500ms`, `10m`, `1h`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a duration: use a number with ms, s, m or h (2s, 500ms, 10m)")]
pub(crate) struct DurationError(String);

pub(crate) fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| DurationError(s.to_owned()))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(DurationError(s.to_owned())),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError(s.to_owned()))
}

/// A clap value parser for a duration that must be above zero (a zero
/// connect timeout would fail every attempt): the text back, checked, so a
/// bad value is a usage error (exit code 2) before anything runs.
pub(crate) fn positive(s: &str) -> Result<String, String> {
    match parse(s) {
        Ok(d) if d.is_zero() => Err(format!("{s:?} is zero: give a duration above 0 (e.g. 5s)")),
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_refuses_zero_and_garbage() {
        assert_eq!(positive("5s").as_deref(), Ok("5s"));
        assert_eq!(positive("100ms").as_deref(), Ok("100ms"));
        for bad in ["0", "0s", "0ms", "0.0m", "five"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table() {
        for (s, ms) in [
            ("2s", 2000),
            ("1.5s", 1500),
            ("500ms", 500),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("3", 3000),
        ] {
            assert_eq!(parse(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for bad in ["", "s", "2 weeks", "-1s", "1d"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
