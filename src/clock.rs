//! Time as the rest of the code receives it: a [`Clock`] passed in (the system clock in `run`, a
//! [`ManualClock`] in tests) and the [`Timestamp`] it reads, with millisecond precision.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A moment in Unix time, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    millis: u64,
}

impl Timestamp {
    pub const fn from_secs(secs: u64) -> Timestamp {
        Timestamp {
            millis: secs.saturating_mul(1000),
        }
    }

    pub const fn from_millis(millis: u64) -> Timestamp {
        Timestamp { millis }
    }

    /// Whole seconds since the Unix epoch (TikTok's `timestamp`, eBay's `created`).
    pub const fn secs(self) -> u64 {
        self.millis / 1000
    }

    /// Milliseconds since the Unix epoch (Lazada's `timestamp`).
    pub const fn millis(self) -> u64 {
        self.millis
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.secs(), self.millis % 1000)
    }
}

/// Where the time comes from.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// A clock shared by everything that reads time.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp::from_millis(millis)
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told: fixed vectors, expiry and backoff without sleeping.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    pub fn new(at: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            millis: AtomicU64::new(at.millis()),
        })
    }

    pub fn set(&self, at: Timestamp) {
        self.millis.store(at.millis(), Ordering::SeqCst);
    }

    pub fn advance_secs(&self, secs: u64) {
        self.millis
            .fetch_add(secs.saturating_mul(1000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds_and_round_seconds_down() {
        let t = Timestamp::from_millis(1_623_812_664_987);
        assert_eq!((t.secs(), t.millis()), (1_623_812_664, 1_623_812_664_987));
        assert_eq!(Timestamp::from_secs(5).millis(), 5000);
        assert_eq!(t.to_string(), "1623812664.987");
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_secs(100));
        assert_eq!(clock.now().secs(), 100);
        clock.advance_secs(60);
        assert_eq!(clock.now().secs(), 160);
        clock.set(Timestamp::from_millis(1));
        assert_eq!(clock.now().millis(), 1);
    }

    #[test]
    fn the_system_clock_reads_the_machines_time() {
        // Judged by std's clock directly, not by anything built on this module.
        let std_now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = std_now();
        let read = SystemClock.now().millis();
        let after = std_now();
        assert!(
            (before..=after).contains(&read),
            "{before} <= {read} <= {after}"
        );
    }
}
