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
