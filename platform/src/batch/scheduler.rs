//! Fair dispatch of queued jobs. Each tenant has its own queue; tenants take turns (round robin), each
//! bounded by its agreement's `max_concurrent_jobs` and all by the platform's worker count, so one
//! tenant's flood of files waits behind its own limit while other tenants' files keep flowing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::domain::JobId;
use crate::tenant::TenantId;

#[derive(Default)]
struct State {
    queues: HashMap<TenantId, VecDeque<JobId>>,
    /// Tenants with queued jobs, in turn order.
    turns: VecDeque<TenantId>,
    running: HashMap<TenantId, usize>,
    total_running: usize,
    /// Jobs handed out and not yet done.
    started: HashSet<JobId>,
}

#[derive(Default)]
pub struct Scheduler {
    state: Mutex<State>,
    /// Wakes the dispatcher when a job is queued or a slot frees up.
    pub wake: Notify,
}

impl Scheduler {
    pub fn push(&self, tenant: &TenantId, job: JobId) {
        let mut s = self.state.lock().expect("scheduler lock");
        let queue = s.queues.entry(tenant.clone()).or_default();
        if queue.contains(&job) {
            return;
        }
        queue.push_back(job);
        if !s.turns.contains(tenant) {
            s.turns.push_back(tenant.clone());
        }
        drop(s);
        self.wake.notify_one();
    }

    /// The next job to start, if a slot is free. `limit` gives a tenant's concurrency limit.
    pub fn next(&self, workers: usize, limit: impl Fn(&TenantId) -> usize) -> Option<(TenantId, JobId)> {
        let mut s = self.state.lock().expect("scheduler lock");
        if s.total_running >= workers {
            return None;
        }
        for _ in 0..s.turns.len() {
            let tenant = s.turns.pop_front()?;
            let running = s.running.get(&tenant).copied().unwrap_or(0);
            if running >= limit(&tenant) {
                s.turns.push_back(tenant);
                continue;
            }
            let queue = s.queues.get_mut(&tenant).expect("a tenant in turn has a queue");
            let job = queue.pop_front().expect("a tenant in turn has a job");
            if queue.is_empty() {
                s.queues.remove(&tenant);
            } else {
                s.turns.push_back(tenant.clone());
            }
            *s.running.entry(tenant.clone()).or_default() += 1;
            s.total_running += 1;
            s.started.insert(job);
            return Some((tenant, job));
        }
        None
    }

    /// Queues `job` unless it is queued here already or running here (the sweep's view of the store
    /// lags behind this process's own bookkeeping).
    pub fn push_if_idle(&self, tenant: &TenantId, job: JobId) {
        if self.state.lock().expect("scheduler lock").started.contains(&job) {
            return;
        }
        self.push(tenant, job);
    }

    pub fn done(&self, tenant: &TenantId, job: JobId) {
        let mut s = self.state.lock().expect("scheduler lock");
        s.started.remove(&job);
        if let Some(n) = s.running.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                s.running.remove(tenant);
            }
        }
        s.total_running = s.total_running.saturating_sub(1);
        drop(s);
        self.wake.notify_one();
    }

    /// Jobs waiting, per tenant (for metrics and stats).
    pub fn depth(&self) -> HashMap<TenantId, usize> {
        let s = self.state.lock().expect("scheduler lock");
        s.queues.iter().map(|(t, q)| (t.clone(), q.len())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn a_flood_does_not_starve_another_tenant() {
        let s = Scheduler::default();
        for _ in 0..100 {
            s.push(&t("big"), JobId::now());
        }
        s.push(&t("small"), JobId::now());
        let first = s.next(4, |_| 4).unwrap();
        let second = s.next(4, |_| 4).unwrap();
        assert_eq!([first.0.as_str(), second.0.as_str()], ["big", "small"]);
    }

    #[test]
    fn per_tenant_and_global_limits_hold() {
        let s = Scheduler::default();
        for _ in 0..5 {
            s.push(&t("aa"), JobId::now());
            s.push(&t("bb"), JobId::now());
        }
        let limit = |x: &TenantId| if x.as_str() == "aa" { 1 } else { 2 };
        let started: Vec<_> = std::iter::from_fn(|| s.next(10, limit)).collect();
        assert_eq!(started.iter().filter(|(x, _)| x.as_str() == "aa").count(), 1);
        assert_eq!(started.iter().filter(|(x, _)| x.as_str() == "bb").count(), 2);
        let aa = started.iter().find(|(x, _)| x.as_str() == "aa").unwrap().1;
        s.done(&t("aa"), aa);
        s.push_if_idle(&t("aa"), aa); // running here no more, so it may be queued again
        s.push_if_idle(&t("bb"), started.iter().find(|(x, _)| x.as_str() == "bb").unwrap().1); // still running: ignored
        assert_eq!(s.next(10, limit).unwrap().0.as_str(), "aa");
        assert!(s.next(4, limit).is_none(), "global limit of 4 reached");
        assert_eq!(s.depth()[&t("aa")], 4, "the finished job was queued again");
        assert_eq!(s.depth()[&t("bb")], 3, "the running job was not");
    }
}
