//! Bandwidth limit: one rate limiter per process charged in bytes, shared by
//! every stream (per-stream limits add up past the operator's cap: two
//! streams at "10 MB/s" each move 20), and a stream wrapper that charges it
//! for every byte read or written on the socket. Also `--bwlimit` parsing.
//!
//! The wrapper sits *under* TLS, so it limits and counts real wire bytes.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::rate::RateLimiter;

/// The bucket holds at most this much time's worth of tokens: short enough that
/// a paused stream cannot burst far past the limit (a `tc tbf` queue drops what
/// overflows), long enough that a 16 KiB TLS record never waits on rounding.
const BURST: Duration = Duration::from_millis(100);
/// Lower bound of the burst, so a tiny limit still passes one TLS record.
const MIN_BURST_BYTES: u64 = 16 * 1024;

/// Errors parsing a `--bwlimit` value.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error(
        "bandwidth limit {0:?} is not a rate: use bytes per second with an optional \
         K/M/G suffix (binary: 1M = 1 MiB/s), or bits with kbit/mbit/gbit (100mbit)"
    )]
    Syntax(String),
    #[error("bandwidth limit {0:?} must be greater than zero")]
    Zero(String),
}

/// Parses a rate in bytes per second: `1048576`, `512K`, `1.5M`, `1G`, `100mbit`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the rate is finite, >= 1 (checked) and far below 2^53"
)]
pub fn parse_rate(s: &str) -> Result<u64, RateError> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| RateError::Syntax(s.to_string()))?;
    let factor: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        _ => return Err(RateError::Syntax(s.to_string())),
    };
    let rate = (value * factor).round();
    if !rate.is_finite() || rate < 1.0 {
        return Err(RateError::Zero(s.to_string()));
    }
    Ok(rate as u64)
}

/// The process's bandwidth limit: the crate's rate limiter charged in bytes,
/// with a burst of `BURST` (100 ms) worth of bytes (at least one TLS record).
pub fn bandwidth_limiter(bytes_per_sec: u64) -> RateLimiter {
    bandwidth_limiter_on(bytes_per_sec, Arc::new(SystemClock))
}

fn bandwidth_limiter_on(bytes_per_sec: u64, clock: Arc<dyn Clock>) -> RateLimiter {
    let rate = bytes_per_sec.max(1);
    let burst = u64::try_from(u128::from(rate) * BURST.as_millis() / 1000)
        .unwrap_or(u64::MAX)
        .max(MIN_BURST_BYTES);
    RateLimiter::with_clock(rate, burst, clock)
}

/// Bytes that crossed the socket, both ways (TLS overhead included).
#[derive(Debug, Default)]
pub struct WireCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl WireCounters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A stream that charges the shared bucket (if any) and counts wire bytes.
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    bucket: Option<Arc<RateLimiter>>,
    counters: Arc<WireCounters>,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, bucket: Option<Arc<RateLimiter>>, counters: Arc<WireCounters>) -> Self {
        Throttled {
            inner,
            bucket,
            counters,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Starts (or stops) charging the bucket: an acceptor charges nothing
    /// until the peer has authenticated.
    pub fn set_bucket(&mut self, bucket: Option<Arc<RateLimiter>>) {
        self.bucket = bucket;
    }
}

impl<S: Read> Read for Throttled<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Some(b) = &self.bucket {
            b.take(n as u64);
        }
        Ok(n)
    }
}

impl<S: Write> Write for Throttled<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(b) = &self.bucket {
            b.take(n as u64);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn parse_rate_table() {
        let ok = [
            ("1048576", 1_048_576),
            ("512K", 524_288),
            ("1.5M", 1_572_864),
            ("1G", 1_073_741_824),
            ("100mbit", 12_500_000),
            ("8kbit", 1000),
            ("2MiB/s", 2_097_152),
        ];
        for (s, want) in ok {
            assert_eq!(parse_rate(s).unwrap(), want, "{s}");
        }
        for bad in ["", "fast", "1T", "-1M", "1..2M"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should fail");
        }
        assert!(matches!(parse_rate("0"), Err(RateError::Zero(_))));
    }

    #[test]
    fn the_burst_is_100_ms_and_at_least_one_tls_record() {
        let clock = Arc::new(ManualClock::default());
        // 1 MB/s: 100 kB go at once, the next byte waits.
        let lim = bandwidth_limiter_on(1_000_000, clock.clone());
        lim.take(100_000);
        assert!(clock.sleeps().is_empty());
        lim.take(1000);
        assert_eq!(clock.sleeps(), [Duration::from_millis(1)]);
        // 1 kB/s: a 16 KiB record still goes at once.
        let lim = bandwidth_limiter_on(1000, clock.clone());
        lim.take(16 * 1024);
        assert_eq!(clock.sleeps().len(), 1);
    }

    #[test]
    fn one_limiter_is_shared_by_all_streams() {
        let clock = Arc::new(ManualClock::default());
        let b = Arc::new(bandwidth_limiter_on(1_000_000, clock.clone()));
        let counters = Arc::new(WireCounters::default());
        let mut s1 = Throttled::new(Vec::new(), Some(b.clone()), counters.clone());
        let mut s2 = Throttled::new(Vec::new(), Some(b.clone()), counters.clone());
        for _ in 0..100 {
            s1.write_all(&[0u8; 10_000]).unwrap();
            s2.write_all(&[0u8; 10_000]).unwrap();
        }
        // 2 MB through one 1 MB/s limiter: ~2 s, not ~1 s as two would give.
        let t = clock.elapsed().as_secs_f64();
        assert!((t - 1.9).abs() < 0.01, "took {t} s");
        assert_eq!(counters.sent(), 2_000_000);
    }

    #[test]
    fn reads_are_counted_and_charged() {
        let clock = Arc::new(ManualClock::default());
        let b = Arc::new(bandwidth_limiter_on(100_000, clock.clone()));
        let counters = Arc::new(WireCounters::default());
        let mut r = Throttled::new(&[1u8; 300_000][..], Some(b), counters.clone());
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).unwrap();
        assert_eq!(counters.received(), 300_000);
        assert!(clock.elapsed().as_secs_f64() > 2.5);
    }
}
