//! A test-only clock fault hook for the Jepsen suite: skews this agent's wall clock by an
//! offset and makes its Raft tick clock run at a rate (2.0: ticks come twice as fast, so
//! elections time out early; 0.5: late). Enabled only when the agent starts with
//! `SHOAL_TEST_HOOKS=1` (then `POST /v1/test/clock` sets it); otherwise time is the system's.
//!
//! Why a hook and not the real clocks: `CLOCK_REALTIME` is host-wide (a time namespace offsets
//! only the monotonic and boot clocks, and only for processes started in it), so setting it
//! would skew every node of the test at once, and the suite itself.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// tokio's: simulated time in the simulations, the monotonic clock otherwise.
use tokio::time::Instant;

/// The environment variable that enables the hook.
pub const ENV: &str = "SHOAL_TEST_HOOKS";

/// Slowest and fastest rates accepted.
pub const RATE_RANGE: (f64, f64) = (0.1, 10.0);

/// Largest offset accepted, either way: a day.
pub const MAX_OFFSET_MS: i64 = 86_400_000;

struct Skew {
    /// Real and skewed tick-clock readings when the rate was last set.
    real: Instant,
    skewed: Instant,
    rate: f64,
    offset_ms: i64,
}

static SKEW: Mutex<Option<Skew>> = Mutex::new(None);

/// Is the hook enabled in this process?
pub fn enabled() -> bool {
    std::env::var(ENV).as_deref() == Ok("1")
}

/// Skews the clocks: the wall clock by `offset_ms`, the tick clock to run at `rate` from now
/// on (continuously: it never jumps, never goes back). `(0, 1.0)` heals.
pub fn set(offset_ms: i64, rate: f64) -> Result<(), String> {
    if !rate.is_finite() || rate < RATE_RANGE.0 || rate > RATE_RANGE.1 {
        return Err(format!(
            "rate {rate}: from {} to {}",
            RATE_RANGE.0, RATE_RANGE.1
        ));
    }
    if offset_ms.abs() > MAX_OFFSET_MS {
        return Err(format!("offset {offset_ms} ms: at most a day either way"));
    }
    let mut skew = SKEW.lock().expect("test clock");
    let real = Instant::now();
    let skewed = read(skew.as_ref(), real);
    *skew = if offset_ms == 0 && rate == 1.0 && skewed <= real {
        None
    } else {
        Some(Skew {
            real,
            skewed,
            rate,
            offset_ms,
        })
    };
    Ok(())
}

fn read(skew: Option<&Skew>, real: Instant) -> Instant {
    match skew {
        None => real,
        Some(s) => {
            let elapsed = real.saturating_duration_since(s.real);
            s.skewed + Duration::from_secs_f64(elapsed.as_secs_f64() * s.rate)
        }
    }
}

/// The tick clock: `Instant::now()` unless skewed.
pub fn now() -> Instant {
    let skew = SKEW.lock().expect("test clock");
    read(skew.as_ref(), Instant::now())
}

/// Milliseconds since the Unix epoch, offset when skewed.
pub fn wall_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let offset = SKEW
        .lock()
        .expect("test clock")
        .as_ref()
        .map_or(0, |s| s.offset_ms);
    real.saturating_add_signed(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_clock_runs_at_the_rate_from_where_it_was() {
        let real = Instant::now();
        let skew = Skew {
            real,
            skewed: real + Duration::from_secs(5),
            rate: 4.0,
            offset_ms: 0,
        };
        assert_eq!(read(Some(&skew), real), real + Duration::from_secs(5));
        assert_eq!(
            read(Some(&skew), real + Duration::from_secs(2)),
            real + Duration::from_secs(13)
        );
        assert_eq!(read(None, real), real);
    }

    // One test for the process-wide skew, so that no other test sees it half set.
    #[test]
    fn skews_refuses_nonsense_and_heals_without_going_back() {
        assert!(set(0, 0.0).is_err());
        assert!(set(0, f64::NAN).is_err());
        assert!(set(MAX_OFFSET_MS + 1, 1.0).is_err());
        let before = wall_ms();
        set(3_600_000, 10.0).unwrap();
        assert!(wall_ms() >= before + 3_600_000);
        let ahead = now();
        // Healing keeps the tick clock where it got to: it never goes back.
        set(0, 1.0).unwrap();
        assert!(now() >= ahead);
        assert!(wall_ms() < before + 3_600_000);
    }
}
