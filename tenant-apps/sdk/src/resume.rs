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
    /// Whether a message came since the last `unstick`.
    heard: bool,
    /// The committed offset `unstick` last sought back from.
    unstuck: Option<i64>,
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
    /// Found by a scan from the one the last message came from (messages come in runs of one
    /// partition): checking a message costs no hashing of its topic's name.
    partitions: Vec<(String, i32, Partition)>,
    last: usize,
    /// Where partitions start when that is past the group's commit (a consumer that keeps its
    /// progress elsewhere, such as the lake sink in its files).
    floors: HashMap<(String, i32), i64>,
}

/// Where the partition should resume: the group's committed offset, or its floor if further.
fn target(consumer: &BaseConsumer, floors: &HashMap<(String, i32), i64>, topic: &str, partition: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).ok().and_then(|got| {
        match got.find_partition(topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    });
    committed.max(floors.get(&(topic.to_owned(), partition)).copied())
}

impl Resume {
    /// The place of a partition's state (added when first asked for).
    fn find(&mut self, topic: &str, partition: i32) -> usize {
        let is = |(t, p, _): &(String, i32, Partition)| *p == partition && t == topic;
        if self.partitions.get(self.last).is_some_and(is) {
            return self.last;
        }
        match self.partitions.iter().position(is) {
            Some(i) => i,
            None => {
                self.partitions.push((topic.to_owned(), partition, Partition::default()));
                self.partitions.len() - 1
            }
        }
    }

    /// Partitions start at these offsets (where past the group's commit).
    pub fn starting_at(start: &TopicPartitionList) -> Self {
        let floors = start
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect();
        Resume { partitions: Vec::new(), last: 0, floors }
    }

    pub fn check(&mut self, consumer: &BaseConsumer, app: &str, topic: &str, partition: i32, offset: i64) -> Verdict {
        let i = self.find(topic, partition);
        self.last = i;
        let floors = &self.floors;
        let p = &mut self.partitions[i].2;
        p.heard = true;
        if p.next == Some(offset) && p.seeking.is_none() {
            p.next = Some(offset + 1);
            return Verdict::Take;
        }
        // The first message, a jump, or the answer to a seek back: where should the partition be?
        let target = match p.seeking {
            Some((target, _)) => Some(target),
            None => target(consumer, floors, topic, partition),
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
                // The committed offset is next (and may not be written yet: `unstick` seeks back from
                // a partition's very end too).
                if offset + 1 == c && p.seeking.take().is_some() {
                    eprintln!("{app}: {topic}/{partition}: back at the committed offset {c}");
                }
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

    /// A partition whose committed offset lies inside its last batch gets no answer at all from tansu
    /// (only the batches after the offset, and there are none), so `check` never sees a first message
    /// to judge and the rest of that batch waits until something new is written. Called now and then:
    /// each assigned partition that gave nothing since the last call and whose committed offset is at
    /// or past the end the broker reports (on tansu the last batch's first offset + 1; on Kafka the
    /// true end, where this costs one message read again and dropped) is sought back to that batch.
    pub fn unstick(&mut self, consumer: &BaseConsumer, app: &str) {
        let Ok(assigned) = consumer.assignment() else { return };
        for e in assigned.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            let i = self.find(topic, partition);
            let (floors, p) = (&self.floors, &mut self.partitions[i].2);
            if std::mem::take(&mut p.heard) || p.seeking.is_some() {
                continue;
            }
            let Some(c) = target(consumer, floors, topic, partition) else { continue };
            if p.unstuck == Some(c) {
                continue;
            }
            let Ok((_, end)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) else { continue };
            if end == 0 || c < end {
                continue;
            }
            let back = end - 1;
            eprintln!("{app}: {topic}/{partition}: nothing after the committed {c} (the broker's end: {end}); seeking back to {back}");
            p.unstuck = Some(c);
            p.seeking = Some((c, c - back));
            p.next = None;
            if let Err(e) = consumer.seek(topic, partition, Offset::Offset(back), Duration::from_secs(10)) {
                eprintln!("{app}: seeking {topic}/{partition} to {back} failed: {e}");
            }
        }
    }
}
