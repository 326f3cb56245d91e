//! Produces tortoise readings (~220-byte JSON, the `tortoise-stream` app's input) to a topic, as fast
//! as the broker takes them or at a fixed rate, each stamped with the time it was produced; or, with
//! `--consume`, reads a topic as fast as one librdkafka consumer can and writes nothing (the ceiling a
//! stream app's reading is bounded by).
//!
//!   stream-load --topic zoo.readings --messages 100000 [--rate 10000] [--from 0] [--brokers host:port]
//!   stream-load --topic zoo.readings --consume 1000000 [--group g] [--assign]
//!     (`--assign`: every partition from its beginning, no group join, as the lake sink starts;
//!     timed from its first message and from its start)
//!   stream-load --topic zoo.readings --wait-topic 30      (until the topic exists, at most 30 s)
//!   stream-load --topic zoo.readings --messages N --partitions 3   (makes the topic first)
//!
//! `--set key=value` (repeatable) passes a librdkafka setting to the producer or consumer.
//!
//! Brokers default to KAFKA_BROKERS, then MYSIMBDP_KAFKA_BROKERS.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

fn main() {
    let started = Instant::now();
    let mut args = std::env::args().skip(1);
    let (mut topic, mut messages, mut rate, mut from, mut consume, mut group) = (None, 0u64, 0u64, 0u64, 0u64, None);
    let (mut wait_topic, mut partitions, mut assign) = (0u64, 0i32, false);
    let mut settings: Vec<(String, String)> = Vec::new();
    let mut brokers = std::env::var("KAFKA_BROKERS").or_else(|_| std::env::var("MYSIMBDP_KAFKA_BROKERS")).ok();
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--topic" => topic = Some(value()),
            "--messages" => messages = value().parse().expect("--messages N"),
            "--rate" => rate = value().parse().expect("--rate N (messages/s)"),
            "--from" => from = value().parse().expect("--from N"),
            "--consume" => consume = value().parse().expect("--consume N"),
            "--group" => group = Some(value()),
            "--assign" => assign = true,
            "--set" => {
                let kv = value();
                let (k, v) = kv.split_once('=').expect("--set key=value");
                settings.push((k.to_owned(), v.to_owned()));
            }
            "--wait-topic" => wait_topic = value().parse().expect("--wait-topic SECONDS"),
            "--partitions" => partitions = value().parse().expect("--partitions N"),
            "--brokers" => brokers = Some(value()),
            other => panic!("unknown argument {other}; see the source's header for usage"),
        }
    }
    let topic = topic.expect("--topic is required");
    let brokers = brokers.expect("--brokers, KAFKA_BROKERS or MYSIMBDP_KAFKA_BROKERS");
    if wait_topic > 0 {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("client");
        let deadline = Instant::now() + Duration::from_secs(wait_topic);
        loop {
            let found = client
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && !t.partitions().is_empty()));
            if found {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} does not exist after {wait_topic} s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if consume > 0 {
        let group = group.unwrap_or_else(|| format!("stream-load-{}", std::process::id()));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("queued.min.messages", "200000");
        for (k, v) in &settings {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().expect("consumer");
        if assign {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
            let mut all = rdkafka::TopicPartitionList::new();
            for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
                all.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning).expect("a partition");
            }
            consumer.assign(&all).expect("assign");
        } else {
            consumer.subscribe(&[&topic]).expect("subscribe");
        }
        let (mut n, mut first) = (0u64, None);
        while n < consume {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                m.expect("a message");
                first.get_or_insert_with(Instant::now);
                n += 1;
            }
        }
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let all = started.elapsed().as_secs_f64();
        println!(
            "consumed {n} messages in {secs:.2}s: {:.0} msg/s (from its start: {all:.2}s: {:.0} msg/s)",
            n as f64 / secs,
            n as f64 / all
        );
        return;
    }
    if partitions > 0 {
        create_topic(&brokers, &topic, partitions);
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &brokers).set("linger.ms", "5").set("queue.buffering.max.messages", "1000000");
    for (k, v) in &settings {
        config.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..messages {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let n = from + i;
        let payload = test_apps::tortoise_reading(n);
        let key = (n % 64).to_string();
        bytes += payload.len() as u64;
        let mut record = BaseRecord::to(&topic).key(&key).payload(&payload).timestamp(now_ms());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(5)); // queue full: let deliveries drain
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("every message delivered");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "produced {messages} messages ({} bytes each on average) in {secs:.2}s: {:.0} msg/s",
        bytes / messages.max(1),
        messages as f64 / secs
    );
}

/// Makes `topic` with `partitions` (a benchmark's own topic, where no platform makes it).
fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let made = futures::executor::block_on(admin.create_topics([&new], &AdminOptions::new())).expect("create topics");
    for r in made {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}
