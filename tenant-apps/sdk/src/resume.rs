//! Checks that the broker resumes each partition where the app's group committed, and makes it so when
//! it does not.
//!
//! A Kafka broker answers a fetch from an offset inside a record batch with that whole batch (the
//! client drops the records before the offset). tansu 0.6 answers with the batches *after* it, so a
//! consumer resuming mid-batch after a crash would silently skip the rest of that batch. So on the first
//! message of a partition (and after any jump in its offsets) the app compares the offset with the
//! group's committed one; when the broker skipped ahead, it seeks back (1,024 offsets, then twice as far
//! each time) until the batch holding the committed offset comes back, and drops the records before the
//! committed offset, which were written before the crash.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const FIRST_STEP: i64 = 1024;

#[derive(Default)]
struct Partition {
    /// The offset the next message should have; None until one was seen.
    next: Option<i64>,
    /// While seeking back: the committed offset to reach, and how far back the last seek went.
    seeking: Option<(i64, i64)>,
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Take,
    /// Already written before a restart: neither process nor commit it.
    Drop,
}

#[derive(Default)]
pub struct Resume {
    partitions: HashMap<String, HashMap<i32, Partition>>,
}

fn committed(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
    match got.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

impl Resume {
    pub fn check(&mut self, consumer: &BaseConsumer, app: &str, topic: &str, partition: i32, offset: i64) -> Verdict {
        if !self.partitions.contains_key(topic) {
            self.partitions.insert(topic.to_owned(), HashMap::new());
        }
        let p = self.partitions.get_mut(topic).expect("inserted").entry(partition).or_default();
        if p.next == Some(offset) && p.seeking.is_none() {
            p.next = Some(offset + 1);
            return Verdict::Take;
        }
        // The first message, a jump, or the answer to a seek back: where should the partition be?
        let target = match p.seeking {
            Some((target, _)) => Some(target),
            None => committed(consumer, topic, partition),
        };
        match target {
            Some(c) if offset > c => {
                let step = p.seeking.map_or(FIRST_STEP, |(_, step)| step * 2);
                let back = (c - step).max(0);
                if p.seeking.is_some_and(|(_, last)| c - last <= 0) {
                    // Already went back to the start: nothing more to find.
                    eprintln!("{app}: {topic}/{partition}: the broker has nothing between {c} and {offset}; going on");
                    p.seeking = None;
                    p.next = Some(offset + 1);
                    return Verdict::Take;
                }
                eprintln!(
                    "{app}: {topic}/{partition}: the broker resumed at {offset}, after the committed {c}; seeking back to {back}"
                );
                p.seeking = Some((c, c - back));
                p.next = None;
                if let Err(e) = consumer.seek(topic, partition, Offset::Offset(back), Duration::from_secs(10)) {
                    eprintln!("{app}: seeking {topic}/{partition} to {back} failed: {e}");
                }
                Verdict::Drop
            }
            Some(c) if offset < c => {
                p.next = Some(offset + 1);
                Verdict::Drop // written before the restart
            }
            _ => {
                if p.seeking.take().is_some() {
                    eprintln!("{app}: {topic}/{partition}: back at the committed offset {offset}");
                }
                p.next = Some(offset + 1);
                Verdict::Take
            }
        }
    }
}
