//! The monitor's judgement of one trusted report against the agreement's thresholds, with the
//! `breach_reports` hysteresis: an instance is acted on only after that many bad reports in a row.
//! A report while nothing waits in the app's topics (no lag) is idle and not judged: a slow rate
//! then only means there is little to do. An idle or good report ends a run of bad ones.

use std::collections::HashMap;

use uuid::Uuid;

use crate::agreement::Thresholds;
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
    Idle,
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
            Verdict::Idle => "idle",
            Verdict::Ok => "ok",
            Verdict::Breach { .. } => "breach",
        }
    }
}

#[derive(Default)]
pub struct Judge {
    streaks: HashMap<Uuid, u64>,
}

impl Judge {
    pub fn judge(&mut self, instance: Uuid, f: Figures, lag: Option<u64>, t: &Thresholds) -> Verdict {
        let Some(lag) = lag else { return Verdict::Unjudged };
        if lag == 0 {
            self.streaks.remove(&instance);
            return Verdict::Idle;
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

    /// Forgets an instance that no longer runs.
    pub fn forget(&mut self, instance: Uuid) {
        self.streaks.remove(&instance);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn thresholds(breach_reports: u64) -> Thresholds {
        Thresholds {
            min_processing_rate: 500.0,
            max_avg_ingestion_time: Duration::from_millis(50),
            breach_reports,
            cooldown: Duration::from_secs(60),
        }
    }

    const SLOW: Figures = Figures { messages: 100, processing_rate: 10.0, avg_ingestion_ms: 1.0 };
    const FAST: Figures = Figures { messages: 100_000, processing_rate: 10_000.0, avg_ingestion_ms: 1.0 };

    #[test]
    fn acts_only_after_breach_reports_bad_reports_in_a_row() {
        let (mut j, i, t) = (Judge::default(), Uuid::new_v4(), thresholds(3));
        let acts: Vec<bool> = (0..7)
            .map(|_| match j.judge(i, SLOW, Some(1000), &t) {
                Verdict::Breach { act, .. } => act,
                v => panic!("{v:?}"),
            })
            .collect();
        assert_eq!(acts, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn a_good_or_idle_report_ends_the_run() {
        let (mut j, i, t) = (Judge::default(), Uuid::new_v4(), thresholds(2));
        assert!(matches!(j.judge(i, SLOW, Some(10), &t), Verdict::Breach { act: false, .. }));
        assert_eq!(j.judge(i, FAST, Some(10), &t), Verdict::Ok);
        assert!(matches!(j.judge(i, SLOW, Some(10), &t), Verdict::Breach { act: false, .. }));
        assert_eq!(j.judge(i, SLOW, Some(0), &t), Verdict::Idle);
        assert!(matches!(j.judge(i, SLOW, Some(10), &t), Verdict::Breach { act: false, .. }));
    }

    #[test]
    fn an_idle_app_is_never_judged_slow() {
        let (mut j, i, t) = (Judge::default(), Uuid::new_v4(), thresholds(1));
        let idle = Figures { messages: 0, processing_rate: 0.0, avg_ingestion_ms: 0.0 };
        for _ in 0..10 {
            assert_eq!(j.judge(i, idle, Some(0), &t), Verdict::Idle);
        }
        assert_eq!(j.judge(i, idle, None, &t), Verdict::Unjudged);
    }

    #[test]
    fn slow_ingestion_is_a_reason_too() {
        let (mut j, i, t) = (Judge::default(), Uuid::new_v4(), thresholds(1));
        let laggy = Figures { messages: 1000, processing_rate: 1000.0, avg_ingestion_ms: 80.0 };
        match j.judge(i, laggy, Some(5), &t) {
            Verdict::Breach { reasons, act: true } => {
                assert_eq!(reasons, [Reason { metric: "avg_ingestion_ms".into(), observed: 80.0, threshold: 50.0 }]);
            }
            v => panic!("{v:?}"),
        }
    }
}
