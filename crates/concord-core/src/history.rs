//! Which automatic versions to keep: the retention policy, as pure functions of the versions
//! kept and the time (the caller owns the clock, so tests inject it).
//!
//! Named versions (those with a label) are never thinned. Automatic ones are kept all while
//! young, then one per clock hour, then one per clock day, then dropped. Buckets are fixed
//! windows of the clock (hour `n` is `[n h, (n+1) h)` since the epoch), not windows relative to
//! now, so thinning again later keeps the same versions: a version kept as its hour's survivor
//! stays that hour's survivor. The survivor of a bucket is its newest version.

use std::collections::HashSet;
use std::time::Duration;

use crate::{VersionId, VersionInfo};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// How long automatic versions are kept, and how densely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Every automatic version younger than this is kept.
    pub keep_all: Duration,
    /// Then one per hour until this age.
    pub hourly: Duration,
    /// Then one per day until this age; older automatic versions are removed.
    pub daily: Duration,
}

impl Default for Retention {
    /// Every version of the last hour, one per hour for a day, one per day for 30 days.
    fn default() -> Self {
        Retention {
            keep_all: Duration::from_secs(3_600),
            hourly: Duration::from_secs(24 * 3_600),
            daily: Duration::from_secs(30 * 24 * 3_600),
        }
    }
}

impl Retention {
    /// The automatic versions among `versions` that the policy no longer keeps at `now_ms`
    /// (milliseconds since the Unix epoch), in id order. Versions dated after `now_ms` (a clock
    /// set back) count as new.
    pub fn thin(&self, versions: &[VersionInfo], now_ms: u64) -> Vec<VersionId> {
        let keep_all = self.keep_all.as_millis() as u64;
        let hourly = (self.hourly.as_millis() as u64).max(keep_all);
        let daily = (self.daily.as_millis() as u64).max(hourly);
        // Survivors per bucket: the newest (largest creation time, then largest id).
        let mut survivors: std::collections::HashMap<(u8, u64), (u64, VersionId)> =
            Default::default();
        let mut doomed = Vec::new();
        let mut bucketed = Vec::new();
        for version in versions.iter().filter(|v| v.label.is_none()) {
            let age = now_ms.saturating_sub(version.created_at_ms);
            let bucket = if age < keep_all {
                continue;
            } else if age < hourly {
                (0, version.created_at_ms / HOUR_MS)
            } else if age < daily {
                (1, version.created_at_ms / DAY_MS)
            } else {
                doomed.push(version.id);
                continue;
            };
            let candidate = (version.created_at_ms, version.id);
            let best = survivors.entry(bucket).or_insert(candidate);
            *best = (*best).max(candidate);
            bucketed.push((bucket, version.id));
        }
        let kept: HashSet<VersionId> = survivors.values().map(|(_, id)| *id).collect();
        doomed.extend(
            bucketed
                .into_iter()
                .filter(|(_, id)| !kept.contains(id))
                .map(|(_, id)| id),
        );
        doomed.sort_unstable();
        doomed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn auto(id: VersionId, created_at_ms: u64) -> VersionInfo {
        VersionInfo {
            id,
            created_at_ms,
            position: Default::default(),
            label: None,
            bytes: 10,
        }
    }

    /// One automatic version every ten minutes for 40 days, and a named one 35 days old.
    fn history(now: u64) -> Vec<VersionInfo> {
        let start = now - 40 * DAY_MS;
        let mut versions: Vec<VersionInfo> = (0..40 * 24 * 6)
            .map(|i| auto(i + 1, start + i * 10 * MIN))
            .collect();
        let mut named = auto(100_000, now - 35 * DAY_MS);
        named.label = Some("launch".into());
        versions.push(named);
        versions
    }

    fn kept(versions: &[VersionInfo], doomed: &[VersionId]) -> Vec<VersionInfo> {
        versions
            .iter()
            .filter(|v| !doomed.contains(&v.id))
            .cloned()
            .collect()
    }

    #[test]
    fn all_of_the_last_hour_one_per_hour_for_a_day_one_per_day_for_a_month() {
        // Midnight of some day, plus a bit, so buckets do not line up with ages.
        let now = 20_000 * DAY_MS + 7 * MIN;
        let versions = history(now);
        let policy = Retention::default();
        let left = kept(&versions, &policy.thin(&versions, now));
        let age = |v: &VersionInfo| now - v.created_at_ms;
        let young = left.iter().filter(|v| age(v) < HOUR_MS).count();
        // Ages 10, 20, 30, 40 and 50 minutes.
        assert_eq!(young, 5, "every version of the last hour");
        let hourly: Vec<_> = left
            .iter()
            .filter(|v| (HOUR_MS..DAY_MS).contains(&age(v)))
            .collect();
        let hours: HashSet<u64> = hourly.iter().map(|v| v.created_at_ms / HOUR_MS).collect();
        assert_eq!(hours.len(), hourly.len(), "one per hour");
        assert!((23..=24).contains(&hourly.len()), "{}", hourly.len());
        let daily: Vec<_> = left
            .iter()
            .filter(|v| v.label.is_none() && (DAY_MS..30 * DAY_MS).contains(&age(v)))
            .collect();
        let days: HashSet<u64> = daily.iter().map(|v| v.created_at_ms / DAY_MS).collect();
        assert_eq!(days.len(), daily.len(), "one per day");
        assert!((29..=30).contains(&daily.len()), "{}", daily.len());
        assert!(
            left.iter()
                .all(|v| v.label.is_some() || age(v) < 30 * DAY_MS),
            "nothing automatic older than 30 days"
        );
        assert!(left.iter().any(|v| v.id == 100_000), "named versions stay");
        // Each bucket keeps its newest version.
        for v in &hourly {
            let bucket = v.created_at_ms / HOUR_MS;
            assert!(versions.iter().all(|o| o.label.is_some()
                || o.created_at_ms / HOUR_MS != bucket
                || o.created_at_ms <= v.created_at_ms
                || now - o.created_at_ms < HOUR_MS));
        }
    }

    #[test]
    fn thinning_again_later_keeps_what_it_kept() {
        let now = 20_000 * DAY_MS + 7 * MIN;
        let policy = Retention::default();
        let versions = history(now);
        let first = kept(&versions, &policy.thin(&versions, now));
        // Five minutes later, nothing new: the same versions stay (none crossed a boundary
        // that drops them, since ages moved by less than a bucket's worth of versions).
        let again = policy.thin(&first, now + 5 * MIN);
        let second = kept(&first, &again);
        assert!(
            first.len() - second.len() <= 2,
            "{} -> {}",
            first.len(),
            second.len()
        );
        // Thinning at the same instant is idempotent.
        assert!(policy.thin(&first, now).is_empty());
    }

    #[test]
    fn versions_from_the_future_count_as_new_and_nothing_named_goes() {
        let now = 1_000 * DAY_MS;
        let mut future = auto(1, now + DAY_MS);
        let policy = Retention::default();
        assert!(policy.thin(std::slice::from_ref(&future), now).is_empty());
        future.created_at_ms = 0;
        future.label = Some("old but named".into());
        assert!(policy.thin(&[future], now).is_empty());
        assert_eq!(policy.thin(&[auto(7, 0)], now), vec![7]);
    }
}
