//! How long appends take, as the commit protocol sees them (the wait for durability included): a
//! process-wide histogram with 2 % wide buckets, read at shutdown for the "log statistics" line and by
//! the benchmarks. Recording is one atomic increment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket `i` holds durations in [GROWTH^i, GROWTH^(i+1)) microseconds.
const GROWTH: f64 = 1.02;
/// Enough buckets for 1.02^1200 µs, far beyond any timeout.
const BUCKETS: usize = 1200;

static COUNTS: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];

fn bucket(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    ((micros as f64).ln() / GROWTH.ln()) as usize
}

/// Records one append's duration.
pub fn record(took: Duration) {
    let i = bucket(took.as_micros() as u64).min(BUCKETS - 1);
    COUNTS[i].fetch_add(1, Ordering::Relaxed);
}

/// Percentiles of the appends recorded so far, in microseconds (each within 2 % of the true value).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AppendLatency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

pub fn snapshot() -> AppendLatency {
    let counts: Vec<u64> = COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return AppendLatency::default();
    }
    let at = |fraction: f64| {
        let rank = ((total as f64 * fraction).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return GROWTH.powi(i as i32 + 1) as u64;
            }
        }
        0
    };
    AppendLatency {
        count: total,
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, |i| GROWTH.powi(i as i32 + 1) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_two_percent_wide() {
        assert_eq!(bucket(0), 0);
        let b = bucket(10_000);
        assert!(GROWTH.powi(b as i32) <= 10_000.0 && 10_000.0 < GROWTH.powi(b as i32 + 1));
    }
}
