//! Store writes sent in groups, as a database groups commits: the items that became ready while the
//! previous statement of their group ran go to the store together, in one statement.
//!
//! Why: a burst of files was claimed and admitted one statement per file. Every claim task queued
//! for a pooled connection before any admission could, so apps could not start until the whole
//! burst had been claimed, then admitted; and each tenant's admissions waited on its admission lock
//! with 20 to 27 of the 32 pooled connections (2,000 files over 4 tenants). Grouped, a burst takes a
//! few statements and a connection per group, and an item arriving alone is sent at once, as before.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// The most items one statement takes: a bound on how long a group's locks are held.
const MAX_GROUP: usize = 256;

/// Sends a group's items to the store: one answer per item, in their order, or why none.
type SendGroup<K, T, R> = dyn Fn(K, Vec<T>) -> BoxFuture<'static, anyhow::Result<Vec<R>>> + Send + Sync;

pub struct Grouped<K, T, R> {
    state: Mutex<State<K, T, R>>,
    send: Box<SendGroup<K, T, R>>,
}

/// An item waiting to be sent, and where its answer goes.
type Waiting<T, R> = (T, oneshot::Sender<Result<R, String>>);

struct State<K, T, R> {
    waiting: HashMap<K, Vec<Waiting<T, R>>>,
    /// Groups with a statement in the store right now (their next statement waits for it).
    busy: HashSet<K>,
}

impl<K, T, R> Grouped<K, T, R>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    pub fn new(send: impl Fn(K, Vec<T>) -> BoxFuture<'static, anyhow::Result<Vec<R>>> + Send + Sync + 'static) -> Self {
        Grouped { state: Mutex::new(State { waiting: HashMap::new(), busy: HashSet::new() }), send: Box::new(send) }
    }

    /// Sends `item` with the other items of its group ready now, and returns its answer.
    pub async fn send(self: &Arc<Self>, key: K, item: T) -> anyhow::Result<R> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut s = self.state.lock().expect("grouped lock");
            s.waiting.entry(key.clone()).or_default().push((item, tx));
            s.busy.insert(key.clone())
        };
        if lead {
            // A task of its own: the item that started it does not wait for the statements after its own.
            tokio::spawn(self.clone().drain(key));
        }
        match rx.await {
            Ok(answer) => answer.map_err(|e| anyhow::anyhow!("{e}")),
            Err(_) => anyhow::bail!("the grouped statement stopped before answering"),
        }
    }

    /// Sends the group's waiting items, statement after statement, until none is left.
    async fn drain(self: Arc<Self>, key: K) {
        loop {
            let group = {
                let mut s = self.state.lock().expect("grouped lock");
                let Some(waiting) = s.waiting.get_mut(&key).filter(|w| !w.is_empty()) else {
                    s.waiting.remove(&key);
                    s.busy.remove(&key);
                    return;
                };
                let n = waiting.len().min(MAX_GROUP);
                waiting.drain(..n).collect::<Vec<_>>()
            };
            let (items, answers): (Vec<T>, Vec<_>) = group.into_iter().unzip();
            let n = items.len();
            match (self.send)(key.clone(), items).await {
                Ok(results) if results.len() == n => {
                    for (answer, result) in answers.into_iter().zip(results) {
                        let _ = answer.send(Ok(result));
                    }
                }
                Ok(results) => {
                    let why = format!("the store answered {} of {n} items sent together", results.len());
                    answers.into_iter().for_each(|a| drop(a.send(Err(why.clone()))));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    answers.into_iter().for_each(|a| drop(a.send(Err(why.clone()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A `Grouped` whose statement doubles each item after `delay`, recording the groups it saw;
    /// an item 0 fails its whole group.
    type Seen = Arc<Mutex<Vec<(u8, Vec<u32>)>>>;

    fn doubling(delay: Duration) -> (Arc<Grouped<u8, u32, u32>>, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let grouped = Grouped::new(move |key, items: Vec<u32>| {
            log.lock().unwrap().push((key, items.clone()));
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                anyhow::ensure!(!items.contains(&0), "item 0 refused");
                Ok(items.iter().map(|i| i * 2).collect())
            }) as BoxFuture<'static, _>
        });
        (Arc::new(grouped), seen)
    }

    #[tokio::test]
    async fn items_ready_while_a_statement_runs_go_together_and_each_gets_its_own_answer() {
        let (grouped, seen) = doubling(Duration::from_millis(50));
        let first = tokio::spawn({
            let g = grouped.clone();
            async move { g.send(1, 1).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await; // the first statement is running
        let rest: Vec<_> = (2..=5)
            .map(|i| {
                let g = grouped.clone();
                tokio::spawn(async move { g.send(1, i).await.unwrap() })
            })
            .collect();
        let other_key = grouped.send(2, 7).await.unwrap();
        assert_eq!(first.await.unwrap(), 2);
        let mut answers = Vec::new();
        for r in rest {
            answers.push(r.await.unwrap());
        }
        assert_eq!(answers, [4, 6, 8, 10]);
        assert_eq!(other_key, 14);
        let seen = seen.lock().unwrap().clone();
        let mut key1: Vec<_> = seen.iter().filter(|(k, _)| *k == 1).map(|(_, g)| g.clone()).collect();
        key1.iter_mut().for_each(|g| g.sort());
        assert_eq!(key1, [vec![1], vec![2, 3, 4, 5]], "the four waited for the first and went in one statement");
        assert!(seen.contains(&(2, vec![7])), "another key is not held up by key 1: {seen:?}");
    }

    #[tokio::test]
    async fn a_failed_statement_fails_its_own_group_only_and_the_next_one_is_sent() {
        let (grouped, _) = doubling(Duration::from_millis(30));
        let bad = tokio::spawn({
            let g = grouped.clone();
            async move { g.send(1, 0).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let after = grouped.send(1, 3).await.unwrap();
        let err = bad.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("item 0 refused"), "{err}");
        assert_eq!(after, 6);
        // The group is idle again: a later item is sent at once.
        assert_eq!(grouped.send(1, 4).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn more_items_than_one_statement_takes_are_split() {
        let (grouped, seen) = doubling(Duration::from_millis(20));
        let tasks: Vec<_> = (1..=(MAX_GROUP as u32 * 2 + 1))
            .map(|i| {
                let g = grouped.clone();
                tokio::spawn(async move { g.send(9, i).await.unwrap() == i * 2 })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        let sizes: Vec<usize> = seen.lock().unwrap().iter().map(|(_, g)| g.len()).collect();
        assert!(sizes.iter().all(|n| *n <= MAX_GROUP), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), MAX_GROUP * 2 + 1);
    }
}
