#!/usr/bin/env python3
"""The benchmark's yardstick: a careful stream consumer of the kind users write themselves, with
confluent-kafka and psycopg 3, run beside the platform's example app on the same messages.

It reads `--topic` in its own consumer group, turns each tortoise reading into a document with its
lineage (the same fields the example app keeps), writes each batch in one transaction into a table of
the coredms' shape (`_id` primary key, `doc` jsonb, `ingested_at`) with ON CONFLICT DO NOTHING, and
commits the batch's offsets only after the write. It stops after `--messages` documents and prints
its rate from its first message to its last commit.

    yardstick-consumer.py --brokers B --topic T --group G --dsn D --table readings_yardstick --messages N
"""

import argparse
import json
import sys
import time

import psycopg
from confluent_kafka import Consumer, KafkaError

FIELDS = ("time", "acceleration", "acceleration_x", "acceleration_y", "acceleration_z", "battery",
          "humidity", "pressure", "temperature")


def document(msg):
    r = json.loads(msg.value())
    doc = {"dev_id": r["dev-id"], **{k: r[k] for k in FIELDS}}
    _, ts = msg.timestamp()
    doc["source"] = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                     "produced_at_ms": ts}
    return (f"{msg.topic()}/{msg.partition()}/{msg.offset()}", json.dumps(doc))


def main():
    a = argparse.ArgumentParser()
    for flag in ("--brokers", "--topic", "--group", "--dsn", "--table"):
        a.add_argument(flag, required=True)
    a.add_argument("--messages", type=int, required=True)
    a.add_argument("--batch", type=int, default=5000)
    args = a.parse_args()

    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": args.group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 10})
    consumer.subscribe([args.topic])
    with psycopg.connect(args.dsn) as db:
        db.execute(f"create table if not exists {args.table} "
                   "(_id text primary key, doc jsonb not null, ingested_at timestamptz not null default now())")
        db.commit()
        done, first = 0, None
        insert = f"insert into {args.table} (_id, doc) values (%s, %s) on conflict do nothing"
        while done < args.messages:
            msgs = consumer.consume(num_messages=args.batch, timeout=0.1)
            rows = []
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        print(f"consumer error: {m.error()}", file=sys.stderr)
                    continue
                rows.append(document(m))
            if not rows:
                continue
            first = first or time.monotonic()
            with db.cursor() as cur:
                cur.executemany(insert, rows)
            db.commit()
            consumer.commit(asynchronous=False)  # only after the write: a crash re-reads, never skips
            done += len(rows)
        span = time.monotonic() - first
    consumer.close()
    print(f"wrote {done} documents in {span:.2f}s: {round(done / span)} msg/s")


if __name__ == "__main__":
    main()
