//! Crash points for the crash torture (`bench/torture.sh`, run short in CI
//! by `tests/hardening_torture.rs`): `DAFFE_FAILPOINT=journal:N` aborts the
//! process right after its Nth journal flush (the records written, synced
//! when the flush is durable: a crash between two journal writes), and
//! `journal:N:torn` aborts it in the Nth flush with only half of what it
//! buffered written (a torn tail). Only in builds with the `testing`
//! feature: a release build has no crash points.
use std::sync::atomic::{AtomicU64, Ordering};

/// What the current journal flush must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JournalCrash {
    /// Nothing: flush as usual.
    None,
    /// Finish the flush, then abort.
    After,
    /// Write half of the buffered records, then abort.
    Torn,
}

/// Journal flushes this process made.
static FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Counts a journal flush and says whether it crashes, per the variable.
pub(crate) fn journal_flush() -> JournalCrash {
    let Ok(spec) = std::env::var("DAFFE_FAILPOINT") else {
        return JournalCrash::None;
    };
    let n = FLUSHES.fetch_add(1, Ordering::SeqCst) + 1;
    decide(&spec, n)
}

/// The pure rule: `spec` against the `n`th flush.
fn decide(spec: &str, n: u64) -> JournalCrash {
    let mut parts = spec.split(':');
    if parts.next() != Some("journal") {
        return JournalCrash::None;
    }
    match (
        parts.next().and_then(|s| s.parse::<u64>().ok()),
        parts.next(),
    ) {
        (Some(at), None) if at == n => JournalCrash::After,
        (Some(at), Some("torn")) if at == n => JournalCrash::Torn,
        _ => JournalCrash::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_flush_crashes_and_only_as_asked() {
        for (spec, n, want) in [
            ("journal:2", 2, JournalCrash::After),
            ("journal:2", 1, JournalCrash::None),
            ("journal:2", 3, JournalCrash::None),
            ("journal:1:torn", 1, JournalCrash::Torn),
            ("journal:1:half", 1, JournalCrash::None),
            ("journal:x", 1, JournalCrash::None),
            ("manifest:1", 1, JournalCrash::None),
            ("", 1, JournalCrash::None),
        ] {
            assert_eq!(decide(spec, n), want, "{spec} at flush {n}");
        }
    }
}
