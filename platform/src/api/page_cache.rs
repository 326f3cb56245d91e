//! Answers to ingestion-log queries, kept while the tenant's jobs stay unchanged. Dashboards and
//! `watch`-style clients ask for the same page over and over; with the cache a repeat costs one index
//! probe (the tenant's latest change stamp, see the `jobs_stamp_change` migration) instead of reading
//! and encoding 100 jobs again. Bounded by total bytes; the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

pub struct PageCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (i64, Bytes)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl PageCache {
    /// `capacity` in bytes of cached answers; 0 turns the cache off.
    pub fn new(capacity: usize) -> Self {
        PageCache { capacity, inner: Mutex::new(Inner::default()) }
    }

    /// The answer for `key` if it was computed at change stamp `generation`.
    pub fn get(&self, key: &str, generation: i64) -> Option<Bytes> {
        let inner = self.inner.lock().expect("page cache lock");
        match inner.entries.get(key) {
            Some((g, body)) if *g == generation => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, key: String, generation: i64, body: Bytes) {
        if body.len() > self.capacity / 4 {
            return; // also when the cache is off
        }
        let mut inner = self.inner.lock().expect("page cache lock");
        if let Some((_, old)) = inner.entries.remove(&key) {
            inner.bytes -= old.len();
            inner.order.retain(|k| *k != key);
        }
        while inner.bytes + body.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some((_, old)) = inner.entries.remove(&oldest) {
                inner.bytes -= old.len();
            }
        }
        inner.bytes += body.len();
        inner.order.push_back(key.clone());
        inner.entries.insert(key, (generation, body));
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_needs_the_same_generation_and_the_bound_holds() {
        let c = PageCache::new(100);
        c.put("a".into(), 7, Bytes::from(vec![1u8; 20]));
        assert!(c.get("a", 7).is_some());
        assert!(c.get("a", 8).is_none(), "a change invalidates");
        for i in 0..10 {
            c.put(format!("k{i}"), 1, Bytes::from(vec![0u8; 20]));
        }
        let inner = c.inner.lock().unwrap();
        assert!(inner.bytes <= 100 && inner.entries.len() == inner.order.len(), "{}", inner.bytes);
        assert!(!inner.entries.contains_key("a"), "the oldest went first");
        drop(inner);
        c.put("huge".into(), 1, Bytes::from(vec![0u8; 60]));
        assert!(c.get("huge", 1).is_none(), "an answer over a quarter of the cache is not kept");
        let off = PageCache::new(0);
        off.put("a".into(), 1, Bytes::from_static(b"x"));
        assert!(off.get("a", 1).is_none() && !off.enabled());
    }
}
