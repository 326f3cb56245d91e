//! A tenant's app that attacks the platform on purpose, for the isolation tests: `hostile <attack>
//! [args...]`. Each attempt prints one line: `DENIED <what>: <why>` when the platform stopped it,
//! `LEAK <what>: <detail>` when it got through, `OK <what>` for the controls (things an app must be
//! able to do, which show the attempts really ran). The tests read those lines.
//!
//! - `read PATH...`: read host files (the platform's keys, other tenants' folders, /etc/shadow), and
//!   the environment and command line of every process it can see under /proc
//! - `write PATH...`: create files outside the app's working folder
//! - `pg role:ROLE... db:DATABASE...`: connect to PostgreSQL as other roles, open other databases
//!   with its own role, and reach beyond its database from inside it
//! - `fork-bomb`: start processes until the kernel refuses
//! - `orphan MARKER`: leave a `setsid` child holding the output, named MARKER, and exit
//! - `memory-child`: a child process that grows without bound; the parent waits for it
//! - `result-fifo`, `result-devzero`, `result-nul`, `result-binary`: a hostile result file, then exit 0
//! - `connections N`: open N connections to its own coredms and hold them for a while
//! - `broker VICTIM DIRECT`: as a stream instance, reach the broker at DIRECT (its own address, not the
//!   one given), then through its own `KAFKA_BROKERS` list, describe, write, read and commit tenant
//!   VICTIM's topic `VICTIM.readings` and group `VICTIM.<app>` (the app's name is this app's)
//! - `linger`: run until stopped (a stream instance that keeps its sandbox alive)

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((attack, rest)) = args.split_first() else {
        eprintln!("usage: hostile <attack> [args...]");
        std::process::exit(2);
    };
    match attack.as_str() {
        "read" => read(rest),
        "write" => write(rest),
        "pg" => pg(rest),
        "fork-bomb" => fork_bomb(),
        "orphan" => orphan(&rest[0]),
        "memory-child" => memory_child(),
        "result-fifo" => result_file(|p| {
            let c = std::ffi::CString::new(p).unwrap();
            // SAFETY: a NUL-terminated path.
            unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
        }),
        "result-devzero" => result_file(|p| {
            let _ = std::os::unix::fs::symlink("/dev/zero", p);
        }),
        "result-nul" => result_file(|p| {
            std::fs::write(p, br#"{"records_ingested": 7, "message": "nul \u0000 and \u001b[31m escape"}"#).unwrap();
        }),
        "result-binary" => result_file(|p| {
            std::fs::write(p, b"{\"records_ingested\": 7, \"message\": \"raw \x00 and invalid \xff\xfe\"}").unwrap();
        }),
        "connections" => connections(rest[0].parse().unwrap()),
        "broker" => broker(&rest[0], &rest[1]),
        "linger" => {
            if !rest.is_empty() {
                read(rest);
            }
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => {
            eprintln!("hostile: unknown attack `{other}`");
            std::process::exit(2);
        }
    }
}

fn line(text: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn read(paths: &[String]) {
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => line(format!("LEAK read {path}: {} bytes", bytes.len())),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => match std::fs::read_dir(path) {
                Ok(entries) => line(format!("LEAK listed {path}: {} entries", entries.count())),
                Err(e) => line(format!("DENIED read {path}: {e}")),
            },
            Err(e) => line(format!("DENIED read {path}: {e}")),
        }
    }
    // Every process it can see, and its environment (the credentials of whatever runs there). The
    // processes of its own run share its environment; anything else readable is a leak.
    let me = std::process::id();
    let own = ["MYSIMBDP_JOB_ID", "MYSIMBDP_INSTANCE_ID"]
        .iter()
        .find_map(|v| std::env::var(v).ok().map(|id| format!("{v}={id}")))
        .unwrap_or_default();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        seen.push(format!("{pid}:{}", comm.trim()));
        match std::fs::read(entry.path().join("environ")) {
            Ok(env) if !own.is_empty() && env.split(|b| *b == 0).any(|v| v == own.as_bytes()) => {
                line(format!("OK environ of {pid} ({}) is its own run's", comm.trim()))
            }
            Ok(env) if !env.is_empty() => line(format!("LEAK environ of {pid} ({}): {} bytes", comm.trim(), env.len())),
            Ok(_) => line(format!("DENIED environ of {pid} ({}): empty", comm.trim())),
            Err(e) => line(format!("DENIED environ of {pid} ({}): {e}", comm.trim())),
        }
    }
    line(format!("OK processes seen: {}", seen.join(" ")));
    match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => line(format!("OK own status readable ({} lines)", s.lines().count())),
        Err(e) => line(format!("LEAK own status unreadable: {e}")),
    }
}

fn write(paths: &[String]) {
    for path in paths {
        match std::fs::write(path, b"hostile") {
            Ok(()) => line(format!("LEAK wrote {path}")),
            Err(e) => line(format!("DENIED write {path}: {e}")),
        }
    }
    for own in ["/work/mine", "/tmp/mine"] {
        match std::fs::write(own, b"mine") {
            Ok(()) => line(format!("OK wrote {own}")),
            Err(e) => line(format!("LEAK could not write its own {own}: {e}")),
        }
    }
}

/// Roles to try (each with an empty password, its own name, the app's own password and `postgres`)
/// and databases to open with the app's own login.
fn pg(args: &[String]) {
    let roles: Vec<&str> = args.iter().filter_map(|a| a.strip_prefix("role:")).collect();
    let databases: Vec<&str> = args.iter().filter_map(|a| a.strip_prefix("db:")).collect();
    let own = std::env::var("MYSIMBDP_COREDMS_URL").unwrap();
    let own_db = std::env::var("MYSIMBDP_COREDMS_DB").unwrap();
    let mut client = match postgres::Client::connect(&own, postgres::NoTls) {
        Ok(c) => {
            line("OK connected as its own role".into());
            c
        }
        Err(e) => return line(format!("LEAK its own role cannot connect: {e}")),
    };
    let (own_user, rest) = own.strip_prefix("postgres://").unwrap().split_once(':').unwrap();
    let (own_password, host_db) = rest.split_once('@').unwrap();
    let host = host_db.split_once('/').unwrap().0;
    let attempt = |url: String, leak: String, denied: String| match postgres::Client::connect(&url, postgres::NoTls) {
        Ok(_) => line(format!("LEAK {leak}")),
        Err(e) => line(format!("DENIED {denied}: {}", pg_message(&e))),
    };
    for role in roles {
        for password in ["", role, own_password, "postgres"] {
            let url = format!("postgres://{role}:{password}@{host}/postgres");
            attempt(url, format!("connected as {role}"), format!("connect as {role}"));
        }
    }
    for db in databases {
        let url = format!("postgres://{own_user}:{own_password}@{host}/{db}");
        attempt(url, format!("own role opened database {db}"), format!("own role on {db}"));
    }
    for sql in [
        "select rolname, rolpassword from pg_authid",
        "set role postgres",
        "copy (select 1) to program 'id'",
        "select pg_read_file('/etc/passwd')",
        "alter role current_user connection limit -1",
        "create role hostile_admin superuser",
    ] {
        match client.batch_execute(sql) {
            Ok(()) => line(format!("LEAK ran `{sql}`")),
            Err(e) => line(format!("DENIED `{sql}`: {}", pg_message(&e))),
        }
    }
    line(format!("OK own database is {own_db}"));
}

/// The server's own message, where there is one.
fn pg_message(e: &postgres::Error) -> String {
    e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
}

fn fork_bomb() {
    let mut started = 0u32;
    loop {
        // SAFETY: the child only sleeps and exits; no locks are held across the fork.
        match unsafe { libc::fork() } {
            0 => {
                std::thread::sleep(Duration::from_secs(120));
                // SAFETY: ends the child.
                unsafe { libc::_exit(0) }
            }
            -1 => {
                let e = std::io::Error::last_os_error();
                line(format!("DENIED fork after {started} processes: {e}"));
                std::process::exit(0);
            }
            _ => started += 1,
        }
        if started >= 100_000 {
            line(format!("LEAK started {started} processes"));
            std::process::exit(0);
        }
    }
}

fn orphan(marker: &str) {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg0(marker).arg("900");
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => line(format!("OK left {marker} running as {} in its own session, holding the output", child.id())),
        Err(e) => line(format!("LEAK could not even start a child: {e}")),
    }
}

fn memory_child() {
    // SAFETY: the child allocates and exits; the parent only waits.
    match unsafe { libc::fork() } {
        0 => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..64 {
                blocks.push(vec![1u8; 64 << 20]);
            }
            line(format!("LEAK child holds {} MiB", blocks.len() * 64));
            std::process::exit(0);
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            line(format!("DENIED child ended with status {status:#x}"));
        }
    }
}

fn result_file(make: impl FnOnce(&str)) {
    let path = std::env::var("MYSIMBDP_RESULT_FILE").unwrap();
    make(&path);
    line(format!("OK made the result file {path}"));
}

fn connections(n: usize) {
    let url = std::env::var("MYSIMBDP_COREDMS_URL").unwrap();
    let mut held = Vec::new();
    let mut first_error = None;
    for _ in 0..n {
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(c) => held.push(c),
            Err(e) => {
                first_error.get_or_insert_with(|| pg_message(&e));
            }
        }
    }
    line(format!("RESULT opened {} of {n} connections", held.len()));
    if let Some(e) = first_error {
        line(format!("DENIED connections beyond {}: {e}", held.len()));
    }
    // Hold them while the test checks that the platform and other tenants carry on.
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    std::thread::sleep(Duration::from_secs(4));
    drop(held);
}

fn broker(victim: &str, direct: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let (brokers, app) = (env("KAFKA_BROKERS"), env("MYSIMBDP_APP"));
    let own_topic = env("MYSIMBDP_INPUT_TOPICS");
    let (topic, group) = (format!("{victim}.readings"), format!("{victim}.{app}"));
    let t = Duration::from_secs(5);

    match direct.parse().map(|a| std::net::TcpStream::connect_timeout(&a, t)) {
        Ok(Ok(_)) => line(format!("LEAK direct: connected to the broker at {direct}")),
        Ok(Err(e)) => line(format!("DENIED direct: {e}")),
        Err(e) => line(format!("DENIED direct: {e}")),
    }
    let config = |group: &str| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &brokers).set("group.id", group).set("enable.auto.commit", "false");
        // A refused commit waits out the session timeout (45 s by default) looking for a coordinator.
        c.set("socket.timeout.ms", "5000").set("message.timeout.ms", "5000").set("session.timeout.ms", "6000");
        c
    };
    let consumer: BaseConsumer = config(&group).create().unwrap();
    match consumer.fetch_metadata(None, t) {
        Ok(m) => {
            let names: Vec<&str> = m.topics().iter().map(|t| t.name()).collect();
            if names.iter().any(|n| !n.starts_with(&format!("{}.", env("MYSIMBDP_TENANT"))) && *n != "mysimbdp.metrics")
            {
                line(format!("LEAK list: {names:?}"));
            } else if names.contains(&own_topic.as_str()) {
                line(format!("OK list: {names:?}"));
            } else {
                line(format!("DENIED list own: {names:?}"));
            }
        }
        Err(e) => line(format!("DENIED list own: {e}")),
    }
    match consumer.fetch_metadata(Some(&topic), t) {
        Ok(m) => match m.topics().iter().find(|x| x.name() == topic).map(|t| (t.error(), t.partitions().len())) {
            Some((None, n)) if n > 0 => line(format!("LEAK describe: {topic} has {n} partitions")),
            other => line(format!("DENIED describe: {other:?}")),
        },
        Err(e) => line(format!("DENIED describe: {e}")),
    }
    let producer: BaseProducer<Delivered> = config("unused").create_with_context(Delivered::default()).unwrap();
    let produce = |to: &str| {
        producer.send(BaseRecord::<(), _>::to(to).payload("{\"forged\": true}")).map_err(|(e, _)| e.to_string())?;
        producer.flush(t).map_err(|e| e.to_string())?;
        producer.context().0.lock().unwrap().take().unwrap_or_else(|| Err("no delivery report".into()))
    };
    match produce(&topic) {
        Ok(()) => line(format!("LEAK produce: wrote to {topic}")),
        Err(e) => line(format!("DENIED produce: {e}")),
    }
    // Read the victim's topic as a member of the victim's group, and of its own.
    let own_group = format!("{}.{app}", env("MYSIMBDP_TENANT"));
    let itself: BaseConsumer = config(&own_group).create().unwrap();
    for (what, reader) in [("read", &consumer), ("read as itself", &itself)] {
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        }
        if let Err(e) = reader.assign(&tpl) {
            line(format!("DENIED {what}: {e}"));
            continue;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        let mut outcome = format!("DENIED {what}: nothing came");
        while std::time::Instant::now() < deadline {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(_)) => {
                    outcome = format!("LEAK {what}: a message of {topic}");
                    break;
                }
                Some(Err(e)) => {
                    outcome = format!("DENIED {what}: {e}");
                    break;
                }
                None => {}
            }
        }
        line(outcome);
    }
    let mut ahead = TopicPartitionList::new();
    for p in 0..4 {
        ahead.add_partition_offset(&topic, p, Offset::Offset(400)).unwrap();
    }
    match consumer.commit(&ahead, CommitMode::Sync) {
        Ok(()) => line(format!("LEAK commit: offsets of {topic} in {group}")),
        Err(e) => line(format!("DENIED commit: {e}")),
    }
    match consumer.fetch_group_list(Some(&group), t) {
        Ok(list) => match list.groups().first() {
            Some(g) if !g.members().is_empty() || !g.state().is_empty() && g.state() != "Dead" => {
                line(format!("LEAK group: {group} is {} with {} members", g.state(), g.members().len()))
            }
            other => line(format!("DENIED group: {:?}", other.map(|g| g.state()))),
        },
        Err(e) => line(format!("DENIED group: {e}")),
    }
    // A flood of connections to what it was given, each asking ApiVersions.
    let gateway = brokers.split(',').next().unwrap_or_default().to_owned();
    let mut held = Vec::new();
    for _ in 0..300 {
        let Ok(mut c) =
            gateway.parse().map_err(|_| ()).and_then(|a| std::net::TcpStream::connect_timeout(&a, t).map_err(|_| ()))
        else {
            continue;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        // ApiVersions v0: length, api key 18, version 0, correlation 1, client id "x".
        let request = [0u8, 0, 0, 11, 0, 18, 0, 0, 0, 0, 0, 1, 0, 1, b'x'];
        let mut len = [0u8; 4];
        if c.write_all(&request).is_ok() && c.read_exact(&mut len).is_ok() {
            held.push(c);
        }
    }
    match held.len() {
        300 => line("LEAK connections: all 300 answered".into()),
        n => line(format!("DENIED connections: {n} of 300 answered")),
    }
    drop(held);
    // The control: its own topic takes its writes.
    match produce(&own_topic) {
        Ok(()) => line(format!("OK produce own: {own_topic}")),
        Err(e) => line(format!("DENIED produce own: {e}")),
    }
    line("DONE broker".into());
}

/// The outcome of the last message produced, as the broker acknowledged it (or not).
#[derive(Default)]
struct Delivered(std::sync::Mutex<Option<Result<(), String>>>);

impl rdkafka::ClientContext for Delivered {}

impl rdkafka::producer::ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        *self.0.lock().unwrap() = Some(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}
