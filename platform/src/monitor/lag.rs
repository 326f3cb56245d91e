//! What the monitor measures at the broker itself, never taken from the app: for each partition of
//! an app's topics, where its log starts and truly ends, the group's committed offset, and which
//! member of the group owns it. From that, lag per instance (the partitions it owns), and how far the
//! group's commits advanced between two observations (the bound on what a report may claim).
//!
//! The end of a partition is read from its last record batch, not only from ListOffsets: tansu
//! answers ListOffsets with the first offset of the last batch + 1, so a backlog produced in one
//! call would otherwise look like a single message.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Buf;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::messaging::groups;
use crate::messaging::wire::Connection;

const CLIENT_ID: &str = "mysimbdp-monitor";
const TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a partition's tail is fetched to find its last batch's header.
const TAIL_BYTES: i32 = 64 << 10;

pub type Key = (String, i32);

/// One partition as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub start: i64,
    pub end: i64,
    /// The group's committed offset, if it committed one.
    pub committed: Option<i64>,
    /// The `group.instance.id` of the member that owns it, if any member does.
    pub owner: Option<String>,
}

impl Partition {
    /// Where the group resumes: its committed offset, or the log's start.
    pub fn position(&self) -> i64 {
        self.committed.unwrap_or(self.start).max(self.start)
    }

    pub fn lag(&self) -> u64 {
        (self.end - self.position()).max(0) as u64
    }
}

/// An app's group over its topics at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    pub partitions: BTreeMap<Key, Partition>,
}

/// What one instance is responsible for: its lag and the positions of its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    pub lag: u64,
    pub positions: BTreeMap<Key, i64>,
}

impl Observation {
    /// The partitions `member` owns; a member that owns none (not joined, or the broker does not say
    /// who owns what) answers for the partitions no one owns, the work no one is doing.
    pub fn share(&self, member: &str) -> Share {
        let owned = self.partitions.values().any(|p| p.owner.as_deref() == Some(member));
        let mine = |p: &Partition| if owned { p.owner.as_deref() == Some(member) } else { p.owner.is_none() };
        let picked: Vec<(&Key, &Partition)> = self.partitions.iter().filter(|(_, p)| mine(p)).collect();
        Share {
            lag: picked.iter().map(|(_, p)| p.lag()).sum(),
            positions: picked.iter().map(|(k, p)| ((*k).clone(), p.position())).collect(),
        }
    }

    /// The most messages the group can have read since `earlier`: from its positions then to the
    /// ends now. With nothing earlier, from the start of every partition's log.
    pub fn readable_since(&self, earlier: Option<&Observation>) -> u64 {
        self.partitions
            .iter()
            .map(|(k, p)| {
                let from = earlier.and_then(|e| e.partitions.get(k)).map_or(0, Partition::position);
                (p.end - from).max(0) as u64
            })
            .sum()
    }
}

fn failed(what: &str, code: i16) -> std::io::Error {
    std::io::Error::other(format!("{what} answered error code {code}"))
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from(s.to_owned()))
}

/// Observes `group` over `topics` (async; a handful of small requests).
pub async fn observe(brokers: &str, group: &str, topics: &[String]) -> std::io::Result<Observation> {
    let mut coordinator = groups::coordinator(brokers, group).await?;
    let layout = metadata(&mut coordinator, topics).await?;
    let committed = committed(&mut coordinator, group, &layout).await?;
    let mut owners = HashMap::new();
    for m in groups::members_on(&mut coordinator, group).await? {
        let Some(id) = m.instance_id() else { continue };
        for key in m.assignment {
            owners.insert(key, id.clone());
        }
    }
    let mut out = Observation::default();
    for (leader, keys) in layout.by_leader {
        let address = layout.brokers.get(&leader).ok_or_else(|| {
            std::io::Error::other(format!("the metadata names leader {leader}, which it does not list"))
        })?;
        let mut conn = Connection::connect(address, CLIENT_ID, TIMEOUT).await?;
        let starts = list_offsets(&mut conn, &keys, -2).await?;
        let mut ends = list_offsets(&mut conn, &keys, -1).await?;
        true_ends(&mut conn, &mut ends).await?;
        for key in keys {
            let partition = Partition {
                start: starts.get(&key).copied().unwrap_or(0),
                end: ends.get(&key).copied().unwrap_or(0),
                committed: committed.get(&key).copied(),
                owner: owners.get(&key).cloned(),
            };
            out.partitions.insert(key, partition);
        }
    }
    Ok(out)
}

struct Layout {
    brokers: HashMap<i32, String>,
    by_leader: HashMap<i32, Vec<Key>>,
}

async fn metadata(conn: &mut Connection, topics: &[String]) -> std::io::Result<Layout> {
    let wanted = topics.iter().map(|t| MetadataRequestTopic::default().with_name(Some(name(t)))).collect();
    let answer = conn.call(&MetadataRequest::default().with_topics(Some(wanted)), 1).await?;
    let brokers = answer.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    let mut by_leader: HashMap<i32, Vec<Key>> = HashMap::new();
    for t in answer.topics {
        let Some(topic) = t.name else { continue };
        if t.error_code != 0 {
            return Err(failed(&format!("Metadata for {}", topic.as_str()), t.error_code));
        }
        for p in t.partitions {
            by_leader.entry(p.leader_id.0).or_default().push((topic.as_str().to_owned(), p.partition_index));
        }
    }
    Ok(Layout { brokers, by_leader })
}

async fn committed(conn: &mut Connection, group: &str, layout: &Layout) -> std::io::Result<HashMap<Key, i64>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, p) in layout.by_leader.values().flatten() {
        by_topic.entry(topic).or_default().push(*p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| OffsetFetchRequestTopic::default().with_name(name(t)).with_partition_indexes(ps))
        .collect();
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from(group.to_owned())))
        .with_topics(Some(topics));
    let answer = conn.call(&request, 1).await?;
    let mut out = HashMap::new();
    for t in answer.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(failed("OffsetFetch", p.error_code));
            }
            if p.committed_offset >= 0 {
                out.insert((t.name.as_str().to_owned(), p.partition_index), p.committed_offset);
            }
        }
    }
    Ok(out)
}

/// The earliest (`-2`) or latest (`-1`) offset of each partition, as the broker lists it.
async fn list_offsets(conn: &mut Connection, keys: &[Key], at: i64) -> std::io::Result<HashMap<Key, i64>> {
    let mut by_topic: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
    for (topic, p) in keys {
        by_topic
            .entry(topic)
            .or_default()
            .push(ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(at));
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| ListOffsetsTopic::default().with_name(name(t)).with_partitions(ps))
        .collect();
    let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(topics);
    let answer = conn.call(&request, 1).await?;
    let mut out = HashMap::new();
    for t in answer.topics {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(failed("ListOffsets", p.error_code));
            }
            out.insert((t.name.as_str().to_owned(), p.partition_index), p.offset);
        }
    }
    Ok(out)
}

/// Raises each listed end to the true end: one past the last offset of the batch at `end - 1`, read
/// from its header (no record is decoded), or the fetch's high watermark if that is higher.
async fn true_ends(conn: &mut Connection, ends: &mut HashMap<Key, i64>) -> std::io::Result<()> {
    let mut by_topic: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
    for ((topic, p), end) in ends.iter().filter(|(_, end)| **end > 0) {
        let partition = FetchPartition::default()
            .with_partition(*p)
            .with_fetch_offset(end - 1)
            .with_partition_max_bytes(TAIL_BYTES);
        by_topic.entry(topic.clone()).or_default().push(partition);
    }
    if by_topic.is_empty() {
        return Ok(());
    }
    let topics =
        by_topic.into_iter().map(|(t, ps)| FetchTopic::default().with_topic(name(&t)).with_partitions(ps)).collect();
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(TAIL_BYTES * 16)
        .with_topics(topics);
    let answer = conn.call(&request, 4).await?;
    for t in answer.responses {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(failed("Fetch", p.error_code));
            }
            let key = (t.topic.as_str().to_owned(), p.partition_index);
            let last = p.records.map_or(-1, last_offset);
            if let Some(end) = ends.get_mut(&key) {
                *end = (*end).max(last + 1).max(p.high_watermark);
            }
        }
    }
    Ok(())
}

/// The last offset in a run of record batches (v2 format), read from the batch headers alone; -1 if
/// there is no whole header. A batch cut short by the fetch's size limit still has its header.
pub fn last_offset(mut records: bytes::Bytes) -> i64 {
    // baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8, crc u32, attributes i16,
    // lastOffsetDelta i32.
    const HEADER: usize = 8 + 4 + 4 + 1 + 4 + 2 + 4;
    let mut last = -1;
    while records.len() >= HEADER {
        let mut header = records.slice(..HEADER);
        let base = header.get_i64();
        let length = header.get_i32();
        header.advance(4);
        let magic = header.get_i8();
        header.advance(4 + 2);
        let delta = header.get_i32();
        if magic < 2 || length < 0 {
            break; // older message formats have no batch header; only v2 is written by today's clients
        }
        last = last.max(base + i64::from(delta));
        let next = 12 + length as usize;
        if next > records.len() {
            break;
        }
        records.advance(next);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, delta: i32, body: usize) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(base.to_be_bytes());
        b.extend(((4 + 1 + 4 + 2 + 4 + body) as i32).to_be_bytes());
        b.extend(0i32.to_be_bytes());
        b.push(2);
        b.extend(0u32.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend(delta.to_be_bytes());
        b.extend(vec![0u8; body]);
        b
    }

    #[test]
    fn the_last_offset_comes_from_the_last_whole_header() {
        let mut records = batch(10, 499, 100);
        records.extend(batch(510, 2, 30));
        assert_eq!(last_offset(records.clone().into()), 512);
        // Cut inside the second batch's body: its header still counts.
        records.truncate(records.len() - 10);
        assert_eq!(last_offset(records.clone().into()), 512);
        // Cut inside the second batch's header: only the first counts.
        let first = batch(10, 499, 100).len();
        records.truncate(first + 20);
        assert_eq!(last_offset(records.into()), 509);
        assert_eq!(last_offset(bytes::Bytes::new()), -1);
    }

    fn partition(end: i64, committed: Option<i64>, owner: Option<&str>) -> Partition {
        Partition { start: 0, end, committed, owner: owner.map(Into::into) }
    }

    #[test]
    fn an_instance_answers_for_its_own_partitions_or_for_those_no_one_owns() {
        let mut o = Observation::default();
        o.partitions.insert(("t".into(), 0), partition(100, Some(100), Some("g-0")));
        o.partitions.insert(("t".into(), 1), partition(500, Some(200), Some("g-1")));
        o.partitions.insert(("t".into(), 2), partition(50, None, None));
        assert_eq!(o.share("g-0").lag, 0);
        assert_eq!(o.share("g-1").lag, 300);
        assert_eq!(o.share("g-2").lag, 50, "a member that owns nothing answers for the unowned");
        assert_eq!(o.share("g-1").positions, BTreeMap::from([(("t".into(), 1), 200)]));
    }

    #[test]
    fn what_the_group_can_have_read_runs_from_its_positions_then_to_the_ends_now() {
        let mut then = Observation::default();
        then.partitions.insert(("t".into(), 0), partition(100, Some(40), None));
        let mut now = Observation::default();
        now.partitions.insert(("t".into(), 0), partition(300, Some(250), None));
        now.partitions.insert(("t".into(), 1), partition(7, None, None));
        assert_eq!(now.readable_since(Some(&then)), 260 + 7);
        assert_eq!(now.readable_since(None), 307);
    }
}
