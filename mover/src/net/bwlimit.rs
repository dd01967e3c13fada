//! Bandwidth limit: one token bucket per process, shared by every stream
//! (FIELD-NOTES: per-stream limits add up past the operator's cap), and a
//! stream wrapper that charges it for every byte read or written on the socket.
//!
//! The wrapper sits *under* TLS, so it limits and counts real wire bytes. The
//! clock is a trait so the bucket's arithmetic is tested without sleeping.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bucket holds at most this much time's worth of tokens: short enough that
/// a paused stream cannot burst far past the limit (a `tc tbf` queue drops what
/// overflows), long enough that a 16 KiB TLS record never waits on rounding.
const BURST: Duration = Duration::from_millis(100);
/// Lower bound of the burst, so a tiny limit still passes one TLS record.
const MIN_BURST_BYTES: f64 = 16.0 * 1024.0;

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
    // Rates are far below 2^53 bytes/s; the float is exact enough.
    Ok(rate as u64)
}

/// Time source of the bucket.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

struct State {
    /// May go negative: a taker that overdraws sleeps off its own debt, so
    /// concurrent streams queue behind each other and the sum stays at the rate.
    tokens: f64,
    last: Instant,
}

/// A token bucket shared by all streams of a process.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

impl TokenBucket {
    /// A bucket of `bytes_per_sec`, starting full.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self::with_clock(bytes_per_sec, Arc::new(SystemClock))
    }

    pub fn with_clock(bytes_per_sec: u64, clock: Arc<dyn Clock>) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate * BURST.as_secs_f64()).max(MIN_BURST_BYTES);
        let last = clock.now();
        TokenBucket {
            rate,
            burst,
            clock,
            state: Mutex::new(State {
                tokens: burst,
                last,
            }),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Charges `n` bytes; sleeps as long as the bucket is in debt.
    pub fn take(&self, n: usize) {
        let wait = {
            // A poisoned lock only means another thread panicked mid-update of
            // two floats; the values are still usable.
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.clock.now();
            let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
            st.last = now;
            st.tokens = (st.tokens + elapsed * self.rate).min(self.burst);
            st.tokens -= n as f64;
            if st.tokens < 0.0 {
                Duration::from_secs_f64(-st.tokens / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
    }
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
    bucket: Option<Arc<TokenBucket>>,
    counters: Arc<WireCounters>,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, bucket: Option<Arc<TokenBucket>>, counters: Arc<WireCounters>) -> Self {
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
    pub fn set_bucket(&mut self, bucket: Option<Arc<TokenBucket>>) {
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
            b.take(n);
        }
        Ok(n)
    }
}

impl<S: Write> Write for Throttled<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(b) = &self.bucket {
            b.take(n);
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

    /// A clock that only moves when someone sleeps, and records the sleeps.
    #[derive(Default)]
    struct FakeClock {
        t: Mutex<(Option<Instant>, Duration)>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            let mut g = self.t.lock().unwrap();
            let base = *g.0.get_or_insert_with(Instant::now);
            base + g.1
        }
        fn sleep(&self, d: Duration) {
            self.t.lock().unwrap().1 += d;
        }
    }

    fn elapsed(c: &FakeClock) -> Duration {
        c.t.lock().unwrap().1
    }

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
    fn bucket_delivers_the_rate_after_the_burst() {
        let clock = Arc::new(FakeClock::default());
        let b = TokenBucket::with_clock(1_000_000, clock.clone());
        // 100 ms of burst is free, then 10 MB at 1 MB/s takes 10 s minus the burst.
        for _ in 0..1000 {
            b.take(10_000);
        }
        let t = elapsed(&clock).as_secs_f64();
        assert!((t - 9.9).abs() < 0.01, "took {t} s");
    }

    #[test]
    fn one_bucket_is_shared_by_all_streams() {
        let clock = Arc::new(FakeClock::default());
        let b = Arc::new(TokenBucket::with_clock(1_000_000, clock.clone()));
        let counters = Arc::new(WireCounters::default());
        let mut s1 = Throttled::new(Vec::new(), Some(b.clone()), counters.clone());
        let mut s2 = Throttled::new(Vec::new(), Some(b.clone()), counters.clone());
        for _ in 0..100 {
            s1.write_all(&[0u8; 10_000]).unwrap();
            s2.write_all(&[0u8; 10_000]).unwrap();
        }
        // 2 MB through one 1 MB/s bucket: ~2 s, not ~1 s as two buckets would give.
        let t = elapsed(&clock).as_secs_f64();
        assert!((t - 1.9).abs() < 0.01, "took {t} s");
        assert_eq!(counters.sent(), 2_000_000);
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let clock = Arc::new(FakeClock::default());
        let b = TokenBucket::with_clock(1_000_000, clock.clone());
        clock.sleep(Duration::from_secs(60));
        let before = elapsed(&clock);
        b.take(1_100_000);
        // A minute idle buys 100 ms of burst, not 60 s: 1.1 MB still waits 1 s.
        let waited = (elapsed(&clock) - before).as_secs_f64();
        assert!((waited - 1.0).abs() < 0.01, "waited {waited} s");
    }

    #[test]
    fn reads_are_counted_and_charged() {
        let clock = Arc::new(FakeClock::default());
        let b = Arc::new(TokenBucket::with_clock(100_000, clock.clone()));
        let counters = Arc::new(WireCounters::default());
        let mut r = Throttled::new(&[1u8; 300_000][..], Some(b), counters.clone());
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).unwrap();
        assert_eq!(counters.received(), 300_000);
        assert!(elapsed(&clock).as_secs_f64() > 2.5);
    }
}
