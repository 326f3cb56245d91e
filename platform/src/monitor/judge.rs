//! The monitor's judgement of one trusted report against the agreement's thresholds, with the
//! `breach_reports` hysteresis: an instance is acted on only after that many bad reports in a row.
//!
//! What the instance's own partitions hold decides first, the rate only after: nothing waiting is
//! idle; a little waiting while the instance's commits move on is keeping up (a trickle below
//! `min_processing_rate` is not slowness, only little to do). "A little" is less than the agreement's
//! minimum rate would clear in one report interval. Only an instance with more waiting than that, or
//! whose commits stand still, is judged by its figures. An idle, keeping-up or good report ends a
//! run of bad ones.

use std::collections::HashMap;
use std::time::Duration;

use super::lag::Share;
use crate::agreement::Thresholds;
use crate::domain::InstanceId;
use crate::store::stream::Reason;

/// The figures of a report the judge reads.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub messages: u64,
    pub processing_rate: f64,
    pub avg_ingestion_ms: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Lag unknown (the broker did not answer): not judged.
    Unjudged,
    /// Read long after it was sent: kept, not judged.
    Stale,
    /// Sent by an instance as it stopped: kept, not judged.
    Final,
    Idle,
    /// A little waits and the instance's commits advance: it keeps up with its input.
    KeepingUp,
    Ok,
    /// Below a threshold; `act` once `breach_reports` in a row have been.
    Breach {
        reasons: Vec<Reason>,
        act: bool,
    },
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Unjudged => "unjudged",
            Verdict::Stale => "stale",
            Verdict::Final => "final",
            Verdict::Idle => "idle",
            Verdict::KeepingUp => "keeping_up",
            Verdict::Ok => "ok",
            Verdict::Breach { .. } => "breach",
        }
    }
}

#[derive(Default)]
pub struct Judge {
    streaks: HashMap<InstanceId, u64>,
    /// What each instance owned when it was last judged.
    last: HashMap<InstanceId, Share>,
}

impl Judge {
    /// Judges a report of `instance` given what it owns at the broker now (`None`: not measured).
    pub fn judge(
        &mut self,
        instance: InstanceId,
        f: Figures,
        share: Option<Share>,
        t: &Thresholds,
        interval: Duration,
    ) -> Verdict {
        let Some(share) = share else { return Verdict::Unjudged };
        let before = self.last.insert(instance, share.clone());
        if share.lag == 0 {
            self.streaks.remove(&instance);
            return Verdict::Idle;
        }
        // Commits moved on since the last report (on a partition owned both times), or, with nothing
        // to compare, the report says something was written. A little that arrived since a report
        // that found nothing waiting says nothing yet about the app's pace.
        let common: Vec<(&i64, &i64)> = before
            .iter()
            .flat_map(|b| b.positions.iter())
            .filter_map(|(k, then)| share.positions.get(k).map(|now| (then, now)))
            .collect();
        let advancing = if common.is_empty() { f.messages > 0 } else { common.iter().any(|(then, now)| now > then) };
        let fresh = before.as_ref().is_none_or(|b| b.lag == 0);
        let little = (t.min_processing_rate * interval.as_secs_f64()).max(1.0);
        if (advancing || fresh) && share.lag as f64 <= little {
            self.streaks.remove(&instance);
            return Verdict::KeepingUp;
        }
        let mut reasons = Vec::new();
        if f.processing_rate < t.min_processing_rate {
            reasons.push(Reason {
                metric: "processing_rate".into(),
                observed: f.processing_rate,
                threshold: t.min_processing_rate,
            });
        }
        let max_ms = t.max_avg_ingestion_time.as_secs_f64() * 1000.0;
        if f.messages > 0 && f.avg_ingestion_ms > max_ms {
            reasons.push(Reason { metric: "avg_ingestion_ms".into(), observed: f.avg_ingestion_ms, threshold: max_ms });
        }
        if reasons.is_empty() {
            self.streaks.remove(&instance);
            return Verdict::Ok;
        }
        let streak = self.streaks.entry(instance).or_default();
        *streak += 1;
        let act = *streak >= t.breach_reports;
        if act {
            *streak = 0; // the next action needs another full run of bad reports
        }
        Verdict::Breach { reasons, act }
    }

    /// Forgets every instance but those in `live`.
    pub fn retain(&mut self, live: &std::collections::HashSet<InstanceId>) {
        self.streaks.retain(|id, _| live.contains(id));
        self.last.retain(|id, _| live.contains(id));
    }

    /// Forgets an instance that no longer runs.
    pub fn forget(&mut self, instance: InstanceId) {
        self.streaks.remove(&instance);
        self.last.remove(&instance);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::collections::BTreeMap;

    use super::*;

    fn thresholds(breach_reports: u64) -> Thresholds {
        Thresholds {
            min_processing_rate: 500.0,
            max_avg_ingestion_time: Duration::from_millis(50),
            breach_reports,
            cooldown: Duration::from_secs(60),
        }
    }

    const INTERVAL: Duration = Duration::from_secs(1);

    /// An instance owning one partition with `lag` waiting, committed up to `at`.
    fn owns(lag: u64, at: i64) -> Option<Share> {
        Some(Share { lag, positions: BTreeMap::from([(("zoo.readings".to_owned(), 0), at)]) })
    }

    const SLOW: Figures = Figures { messages: 100, processing_rate: 10.0, avg_ingestion_ms: 1.0 };
    const FAST: Figures = Figures { messages: 100_000, processing_rate: 10_000.0, avg_ingestion_ms: 1.0 };

    #[test]
    fn acts_only_after_breach_reports_bad_reports_in_a_row() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(3));
        let acts: Vec<bool> = (0..7)
            .map(|_| match j.judge(i, SLOW, owns(1000, 0), &t, INTERVAL) {
                Verdict::Breach { act, .. } => act,
                v => panic!("{v:?}"),
            })
            .collect();
        assert_eq!(acts, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn a_good_or_idle_report_ends_the_run() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(2));
        assert!(matches!(j.judge(i, SLOW, owns(1000, 0), &t, INTERVAL), Verdict::Breach { act: false, .. }));
        assert_eq!(j.judge(i, FAST, owns(1000, 0), &t, INTERVAL), Verdict::Ok);
        assert!(matches!(j.judge(i, SLOW, owns(1000, 0), &t, INTERVAL), Verdict::Breach { act: false, .. }));
        assert_eq!(j.judge(i, SLOW, owns(0, 0), &t, INTERVAL), Verdict::Idle);
        assert!(matches!(j.judge(i, SLOW, owns(1000, 0), &t, INTERVAL), Verdict::Breach { act: false, .. }));
    }

    #[test]
    fn an_idle_app_is_never_judged_slow() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(1));
        let idle = Figures { messages: 0, processing_rate: 0.0, avg_ingestion_ms: 0.0 };
        for _ in 0..10 {
            assert_eq!(j.judge(i, idle, owns(0, 0), &t, INTERVAL), Verdict::Idle);
        }
        assert_eq!(j.judge(i, idle, None, &t, INTERVAL), Verdict::Unjudged);
    }

    #[test]
    fn slow_ingestion_is_a_reason_too() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(1));
        let laggy = Figures { messages: 1000, processing_rate: 1000.0, avg_ingestion_ms: 80.0 };
        match j.judge(i, laggy, owns(5000, 0), &t, INTERVAL) {
            Verdict::Breach { reasons, act: true } => {
                assert_eq!(reasons, [Reason { metric: "avg_ingestion_ms".into(), observed: 80.0, threshold: 50.0 }]);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_trickle_it_keeps_up_with_is_never_slow() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(1));
        let trickle = Figures { messages: 20, processing_rate: 20.0, avg_ingestion_ms: 1.0 };
        for n in 0..10 {
            // 3 to 5 messages in flight, commits moving on: under the 500 a compliant app clears in 1 s.
            assert_eq!(j.judge(i, trickle, owns(3 + n % 3, 20 * n as i64), &t, INTERVAL), Verdict::KeepingUp);
        }
    }

    #[test]
    fn a_little_lag_behind_commits_that_stand_still_is_judged() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(2));
        let stuck = Figures { messages: 0, processing_rate: 0.0, avg_ingestion_ms: 0.0 };
        // New since a report that found nothing waiting: not yet a sign of anything.
        assert_eq!(j.judge(i, stuck, owns(0, 7), &t, INTERVAL), Verdict::Idle);
        assert_eq!(j.judge(i, stuck, owns(40, 7), &t, INTERVAL), Verdict::KeepingUp);
        assert!(matches!(j.judge(i, stuck, owns(40, 7), &t, INTERVAL), Verdict::Breach { act: false, .. }));
        assert!(matches!(j.judge(i, stuck, owns(45, 7), &t, INTERVAL), Verdict::Breach { act: true, .. }));
    }

    #[test]
    fn a_backlog_beyond_one_interval_of_the_minimum_rate_is_judged_by_rate() {
        let (mut j, i, t) = (Judge::default(), InstanceId::now(), thresholds(1));
        assert_eq!(j.judge(i, FAST, owns(600, 0), &t, INTERVAL), Verdict::Ok);
        assert!(matches!(j.judge(i, SLOW, owns(600, 10), &t, INTERVAL), Verdict::Breach { act: true, .. }));
    }
}
