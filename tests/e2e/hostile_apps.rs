//! Tenants attacking the platform and each other through the real platform: one uploaded app per
//! attack, run as the tenant's batch job (and as stream instances where the attack applies). Each
//! test asserts that the attack failed, that the controls beside it worked (so the attempts really
//! ran), and that another tenant's job running at the same time succeeded.

use mysimbdp::domain::JobState;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysimbdp::store::jobs::Job;
use mysimbdp_e2e::{
    agreement, bundle, eventually, gen_data, pg_url, store_url, stripped, unique, workspace_root, Http, TestPlatform,
};

/// The attacker's agreement: one route (and app) per attack.
fn evil_agreement(t: &str) -> String {
    let route = |files: &str, app: &str, extra: &str| {
        format!("    - {{files: \"{files}-*.csv\", app: {app}, timeout: 1m, memory: 256MiB{extra}}}\n")
    };
    let mut routes = String::from("  routes:\n");
    for (attack, extra) in [
        ("read", ""),
        ("write", ""),
        ("pg", ""),
        ("bomb", ", max_processes: 48"),
        ("orphan", ""),
        ("memory", ""),
        ("fifo", ""),
        ("zero", ""),
        ("nul", ""),
        ("binary", ""),
        ("conn", ""),
        ("slow", ""),
        ("slower", ""),
    ] {
        routes.push_str(&route(attack, attack, extra));
    }
    let batch = format!("{routes}  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 4\n  retries: 0");
    agreement(t, &batch).replace("apps:\n", "coredms: {max_connections: 10, statement_timeout: 2s}\napps:\n")
}

fn good_agreement(t: &str) -> String {
    let batch = "  routes: [{files: \"*.jsonl\", app: orders-jsonl, timeout: 1m, memory: 256MiB}]\n  formats: [jsonl]\n  max_file_size: 10MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 2";
    agreement(t, batch)
}

async fn upload_bundle(http: &Http, token: &str, tenant: &str, name: &str, kind: &str, script: &str) {
    let archive = bundle(name, kind, script, &["hostile"]);
    let r = http
        .call("POST", &format!("/v1/tenants/{tenant}/apps"), Some(token), Some(("application/gzip", archive)))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// The good tenant's real app, installed as its operator would.
async fn install_orders(p: &TestPlatform, tenant: &str) {
    let path = p.dir.path().join("orders-jsonl");
    std::fs::write(&path, stripped("orders-jsonl")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.install(tenant, "orders-jsonl", &path).await;
}

fn log(job: &Job) -> &str {
    job.log.as_deref().unwrap_or_default()
}

/// The attack's log has no leak, a DENIED line for every target, and its controls.
fn assert_denied(job: &Job, targets: &[String], controls: &[&str]) {
    let log = log(job);
    assert!(!log.contains("LEAK"), "the attack got through: {log}");
    for t in targets {
        assert!(
            log.contains(&format!("DENIED read {t}:")) || log.contains(&format!("DENIED write {t}:")),
            "{t} was not tried: {log}"
        );
    }
    for c in controls {
        assert!(log.contains(&format!("OK {c}")), "control `{c}` missing: {log}");
    }
}

/// Some job of `good`, succeeded, ran while `attack` ran.
fn assert_overlapped(attack: &Job, good: &[Job]) {
    let (a0, a1) = match (attack.started_at, attack.finished_at) {
        (Some(a0), Some(a1)) => (a0, a1),
        _ => panic!("the attack never ran: {attack:?}"),
    };
    let during = good.iter().filter(|g| {
        let (g0, g1) = (g.started_at.unwrap(), g.finished_at.unwrap());
        g0 < a1 && g1 > a0
    });
    let overlapping: Vec<&Job> = during.collect();
    assert!(!overlapping.is_empty(), "no job of the other tenant ran during {}", attack.file_name);
    for g in overlapping {
        assert_eq!(g.state, JobState::Succeeded, "{g:?}");
        assert!(g.records_ingested.unwrap_or(0) > 0, "{g:?}");
    }
}

struct Arena {
    p: TestPlatform,
    http: Http,
    evil: String,
    good: String,
    evil_token: String,
    /// Files of the good tenant on the host, which the attacker tries to reach.
    good_files: Vec<String>,
}

/// A platform with an attacker and a victim; the victim has already ingested one file and had one
/// quarantined, and has one file waiting in staging, so there is something of it everywhere.
async fn arena() -> Arena {
    let (evil, good) = (unique("evil"), unique("good"));
    let mut p = TestPlatform::new(&[(&evil, evil_agreement(&evil)), (&good, good_agreement(&good))]).await;
    p.start().await;
    install_orders(&p, &good).await;
    p.drop_file(&good, "first.jsonl", &gen_data("orders", 200, 0, 1));
    p.drop_file(&good, "broken.jsonl", b"this is not json\n");
    let ingested = p.wait_moved(&p.wait_final(&good, "first.jsonl").await).await;
    let quarantined = p.wait_moved(&p.wait_final(&good, "broken.jsonl").await).await;
    std::fs::write(p.staging_dir.join(&good).join(".waiting.jsonl"), b"{}\n").unwrap();
    std::fs::write(p.dir.path().join("jwt-secret"), &p.jwt_secret).unwrap();
    let root = workspace_root().join(".local");
    let mut good_files: Vec<PathBuf> = vec![
        ingested,
        quarantined,
        p.staging_dir.join(&good).join(".waiting.jsonl"),
        p.data_dir.join("apps").join(&good).join("orders-jsonl/1/orders-jsonl"),
        p.data_dir.join("work"),
        p.tenants_dir.join(format!("{good}.yaml")),
        p.dir.path().join("jwt-secret"),
        PathBuf::from(format!("/proc/{}/environ", std::process::id())),
        PathBuf::from("/etc/shadow"),
    ];
    // The checkout's own secrets, where the local services made them.
    good_files.extend(["jwt-secret", "env", "pg-password"].map(|f| root.join(f)).into_iter().filter(|f| f.exists()));
    for f in &good_files {
        assert!(std::fs::metadata(f).is_ok(), "{} must exist on the host for the attack to mean anything", f.display());
    }
    let evil_token = p.token(Some(&evil));
    let http = p.http();
    let good_files = good_files.iter().map(|f| f.display().to_string()).collect();
    Arena { p, http, evil, good, evil_token, good_files }
}

impl Arena {
    async fn attack(&self, app: &str, script: &str) {
        upload_bundle(&self.http, &self.evil_token, &self.evil, app, "batch", script).await;
    }

    /// Drops the attack's file and two files of the good tenant beside it.
    fn launch(&self, attack: &str, n: usize) {
        for i in 0..2 {
            let name = format!("during-{attack}-{i}.jsonl");
            self.p.drop_file(&self.good, &name, &gen_data("orders", 2000, 0, (n * 10 + i) as u64));
        }
        // Content of its own: the same bytes twice would be refused as a duplicate.
        self.p.drop_file(&self.evil, &format!("{attack}-1.csv"), format!("attack\n{attack}\n").as_bytes());
    }

    /// Runs one attack beside two jobs of the good tenant; the attack's job, once final.
    async fn run(&self, attack: &str, n: usize) -> Job {
        self.launch(attack, n);
        self.outcome(attack).await
    }

    async fn outcome(&self, attack: &str) -> Job {
        let job = self.p.wait_final(&self.evil, &format!("{attack}-1.csv")).await;
        let mut good = Vec::new();
        for i in 0..2 {
            good.push(self.p.wait_final(&self.good, &format!("during-{attack}-{i}.jsonl")).await);
        }
        assert_overlapped(&job, &good);
        job
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_app_reads_and_writes_nothing_of_the_platform_or_another_tenant() {
    let a = arena().await;
    let targets = a.good_files.join(" ");
    // Each attack sleeps a moment at the end, so the other tenant's jobs run beside it.
    a.attack("read", &format!("\"$APP/hostile\" read {targets}; sleep 1")).await;
    let writes: Vec<String> = ["/x", "/etc/x", "/usr/x", "/app/x", "/input/x", "/dev/x", "/proc/sys/kernel/hostname"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            [
                a.p.staging_dir.join(&a.good).join("planted.jsonl"),
                a.p.tenants_dir.join("planted.yaml"),
                a.p.data_dir.join("apps").join(&a.good).join("orders-jsonl/1/planted"),
                a.p.dir.path().join("planted"),
            ]
            .map(|p| p.display().to_string()),
        )
        .collect();
    a.attack("write", &format!("\"$APP/hostile\" write {}; sleep 1", writes.join(" "))).await;
    let login = |url: String| url.split("://").nth(1).unwrap().split(':').next().unwrap().to_owned();
    let (admin_role, store_role) = (login(pg_url()), login(store_url()));
    let good_role = a.p.tenant(&a.good).coredms_name();
    let pg = format!(
        "\"$APP/hostile\" pg role:postgres role:{admin_role} role:{store_role} role:{good_role} db:postgres db:{} db:{good_role}; sleep 1",
        a.p.database
    );
    a.attack("pg", &pg).await;

    let read = a.run("read", 0).await;
    assert_eq!(read.state, JobState::Succeeded, "{read:?}");
    assert_denied(&read, &a.good_files, &["processes seen", "own status readable"]);
    // The only processes it sees are its own sandbox's: the init (whose environment is empty or
    // closed to it) and the app's shell and program.
    let seen = log(&read).lines().find_map(|l| l.strip_prefix("OK processes seen: ")).unwrap();
    for p in seen.split_whitespace() {
        let comm = p.split(':').nth(1).unwrap();
        assert!(["mysimbdp-sandbo", "run", "sleep"].contains(&comm), "{seen}");
    }

    let write = a.run("write", 1).await;
    assert_eq!(write.state, JobState::Succeeded, "{write:?}");
    assert_denied(&write, &writes, &["wrote /work/mine", "wrote /tmp/mine"]);
    for w in &writes[7..] {
        assert!(!Path::new(w).exists(), "{w} was planted on the host");
    }

    let pg = a.run("pg", 2).await;
    assert_eq!(pg.state, JobState::Succeeded, "{pg:?}");
    let log = log(&pg);
    assert!(!log.contains("LEAK") && log.contains("OK connected as its own role"), "{log}");
    for role in ["postgres", &admin_role, &store_role, &good_role] {
        assert_eq!(log.matches(&format!("DENIED connect as {role}:")).count(), 4, "{role}: {log}");
    }
    assert!(log.contains("password authentication failed"), "{log}");
    for db in ["postgres", &a.p.database, &good_role] {
        assert!(log.contains(&format!("DENIED own role on {db}: permission denied for database")), "{db}: {log}");
    }
    assert_eq!(log.matches("DENIED `").count(), 6, "{log}");
    a.p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_app_cannot_outgrow_its_run_or_poison_its_result() {
    let a = arena().await;
    let marker = format!("hostile-orphan-{}", uuid::Uuid::new_v4().simple());
    a.attack("bomb", "\"$APP/hostile\" fork-bomb; sleep 1").await;
    a.attack("orphan", &format!("\"$APP/hostile\" orphan {marker}; sleep 1")).await;
    a.attack("memory", "\"$APP/hostile\" memory-child; sleep 1").await;
    for attack in ["fifo", "zero", "nul", "binary"] {
        let mode = match attack {
            "fifo" => "result-fifo",
            "zero" => "result-devzero",
            other => &format!("result-{other}"),
        };
        a.attack(attack, &format!("\"$APP/hostile\" {mode}; sleep 1")).await;
    }

    // A fork bomb stops at the route's 48 processes, and the run ends with the app.
    let bomb = a.run("bomb", 0).await;
    assert_eq!(bomb.state, JobState::Succeeded, "{bomb:?}");
    let stopped_at: u32 = log(&bomb)
        .lines()
        .find_map(|l| l.strip_prefix("DENIED fork after ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", log(&bomb)));
    assert!((30..48).contains(&stopped_at), "stopped at {stopped_at}: {}", log(&bomb));

    // A child in its own session, holding the output: killed with the run, and the job ends.
    let orphan = a.run("orphan", 1).await;
    assert_eq!(orphan.state, JobState::Succeeded, "{orphan:?}");
    assert!(orphan.run_ms.unwrap() < 10_000, "the job waited for the orphan: {orphan:?}");
    let left = std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(left.stdout.is_empty(), "the orphan outlived its run: {}", String::from_utf8_lossy(&left.stdout));
    assert!(log(&orphan).contains(&format!("OK left {marker} running")), "{}", log(&orphan));

    // Memory taken by a child, not the app itself, still counts: killed, memory_limit.
    let memory = a.run("memory", 2).await;
    assert_eq!(
        (memory.state.as_str(), memory.reason.map(|r| r.as_str())),
        ("failed", Some("memory_limit")),
        "{memory:?}"
    );
    assert!(memory.detail.as_deref().unwrap().contains("memory limit of 256MiB"), "{memory:?}");
    assert!(!log(&memory).contains("LEAK"), "{}", log(&memory));

    // Result files that would hang, exhaust or poison the platform are refused, and the job ends.
    for (n, (attack, why)) in
        [("fifo", "is a FIFO"), ("zero", "symbolic link"), ("binary", "not the result JSON")].into_iter().enumerate()
    {
        let job = a.run(attack, 3 + n).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert!(
            log(&job).contains("[mysimbdp] result file ignored") && log(&job).contains(why),
            "{attack}: {}",
            log(&job)
        );
        assert_eq!(job.records_ingested, None, "{job:?}");
    }
    let nul = a.run("nul", 6).await;
    assert_eq!((nul.state.as_str(), nul.records_ingested), ("succeeded", Some(7)), "{nul:?}");
    let message = nul.app_message.as_deref().unwrap();
    assert!(!message.contains('\0') && !message.contains('\u{1b}') && message.contains('\u{FFFD}'), "{message:?}");
    a.p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_is_held_to_its_coredms_connections_and_statement_timeout() {
    let a = arena().await;
    a.attack("conn", "\"$APP/hostile\" connections 500").await;
    a.launch("conn", 0);
    // While it holds its connections, the platform answers and the other tenant's jobs run.
    let job_started = async {
        for _ in 0..600 {
            let jobs = a.p.jobs_for(&a.evil, "conn-1.csv").await;
            if jobs.iter().any(|j| j.state == JobState::Running) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the attack never ran");
    };
    job_started.await;
    let t = std::time::Instant::now();
    let r = a.http.get(&format!("/v1/tenants/{}/ingestions", a.good), &a.p.token(Some(&a.good))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(2), "the API took {:?}", t.elapsed());
    let conn = a.outcome("conn").await;
    assert_eq!(conn.state, JobState::Succeeded, "{conn:?}");
    let opened: usize = log(&conn)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT opened ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", log(&conn)));
    assert_eq!(opened, 10, "the agreement's max_connections: {}", log(&conn));
    assert!(log(&conn).contains("too many connections for role"), "{}", log(&conn));

    // The agreement's statement timeout: PostgreSQL's own for a session that keeps the default, and
    // the platform's sweep for one that turned it off.
    let psql = |sql: &str| format!("psql \"$MYSIMBDP_COREDMS_URL\" -v ON_ERROR_STOP=1 -c '{sql}'");
    a.attack("slow", &psql("select pg_sleep(60)")).await;
    a.attack("slower", &psql("set statement_timeout = 0; select pg_sleep(60)")).await;
    let slow = a.run("slow", 1).await;
    assert_eq!((slow.state.as_str(), slow.reason.map(|r| r.as_str())), ("failed", Some("app_error")), "{slow:?}");
    assert!(log(&slow).contains("canceling statement due to statement timeout"), "{}", log(&slow));
    let slower = a.run("slower", 2).await;
    assert_eq!((slower.state.as_str(), slower.reason.map(|r| r.as_str())), ("failed", Some("app_error")), "{slower:?}");
    assert!(log(&slower).contains("canceling statement due to user request"), "{}", log(&slower));
    assert!(slower.run_ms.unwrap() < 30_000, "cancelled within the timeout, its grace and one sweep: {slower:?}");
    a.p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_instance_sees_no_other_instance_and_leaves_nothing_behind() {
    use crate::stream::{start, stream_agreement, wait_state, Stream};
    let (evil, good) = (unique("evil"), unique("good"));
    let s = Stream { report_interval: "1m", ..Default::default() };
    let evil_agreement =
        stream_agreement(&evil, &s).replace("  memory: 256MiB\n", "  memory: 256MiB\n  max_processes: 48\n");
    let mut p = TestPlatform::new(&[(&evil, evil_agreement), (&good, stream_agreement(&good, &s))]).await;
    p.start().await;
    let http = p.http();
    let (te, tg) = (p.token(Some(&evil)), p.token(Some(&good)));
    // The victim: an instance holding its coredms login in its environment.
    upload_bundle(&http, &tg, &good, "victim", "stream", "exec \"$APP/hostile\" linger").await;
    let victim = start(&http, &tg, &good, "victim", 1).await[0]["id"].as_str().unwrap().to_owned();
    let running = wait_state(&http, &tg, &good, &victim, "running", Duration::from_secs(30)).await;
    // The recorded pid is the instance's init; the app is its child once the sandbox is built.
    let victim_init = running["pid"].as_i64().unwrap();
    let children = format!("/proc/{victim_init}/task/{victim_init}/children");
    let environ = std::cell::RefCell::new(String::new());
    eventually(Duration::from_secs(10), "the victim's app to hold its login", async || {
        let app = std::fs::read_to_string(&children).ok().and_then(|c| c.split_whitespace().next().map(str::to_owned));
        let Some(app) = app else { return false };
        *environ.borrow_mut() = format!("/proc/{app}/environ");
        std::fs::read(&*environ.borrow()).is_ok_and(|e| e.windows(20).any(|w| w == b"MYSIMBDP_COREDMS_URL"))
    })
    .await;
    let environ = environ.into_inner();
    // The attacker: leaves an orphan in its own session, then reads what it can while it runs.
    let marker = format!("hostile-stream-orphan-{}", uuid::Uuid::new_v4().simple());
    let platform_environ = format!("/proc/{}/environ", std::process::id());
    let planted = p.staging_dir.join(&good).join("planted.csv");
    let script = format!(
        "\"$APP/hostile\" orphan {marker}; \"$APP/hostile\" write /x /app/x /etc/x {planted}; \"$APP/hostile\" fork-bomb; exec \"$APP/hostile\" linger {environ} {platform_environ}",
        planted = planted.display()
    );
    upload_bundle(&http, &te, &evil, "spy", "stream", &script).await;
    let spy = start(&http, &te, &evil, "spy", 1).await[0]["id"].as_str().unwrap().to_owned();
    wait_state(&http, &te, &evil, &spy, "running", Duration::from_secs(30)).await;
    let log_path = format!("/v1/tenants/{evil}/instances/{spy}/log");
    let mut log = String::new();
    for _ in 0..100 {
        log = http.get(&log_path, &te).await.text();
        if log.contains("own status readable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains("OK processes seen") && !log.contains("LEAK"), "{log}");
    for w in ["/x", "/app/x", "/etc/x", &planted.display().to_string()] {
        assert!(log.contains(&format!("DENIED write {w}:")), "{w}: {log}");
    }
    assert!(!planted.exists() && log.contains("OK wrote /work/mine"), "{log}");
    // The fork bomb stopped at the agreement's 48 processes and threads.
    let forks: u32 =
        log.lines().find_map(|l| l.strip_prefix("DENIED fork after ")?.split(' ').next()?.parse().ok()).unwrap();
    assert!((30..48).contains(&forks), "{log}");
    assert!(
        log.contains(&format!("DENIED read {environ}:")) && log.contains(&format!("DENIED read {platform_environ}:")),
        "{log}"
    );
    // Its own init, its orphan and the fork bomb's children: nothing of the victim's.
    let seen = log.lines().find_map(|l| l.strip_prefix("OK processes seen: ")).unwrap();
    assert!(
        seen.split_whitespace()
            .all(|p| ["mysimbdp-sandbo", "sleep", "hostile"].contains(&p.split(':').nth(1).unwrap())),
        "{seen}"
    );
    // Stopped, the instance takes its orphan with it.
    let r = http.call("DELETE", &format!("/v1/tenants/{evil}/instances/{spy}"), Some(&te), None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    wait_state(&http, &te, &evil, &spy, "exited", Duration::from_secs(30)).await;
    let left = std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(left.stdout.is_empty(), "the orphan outlived its instance: {}", String::from_utf8_lossy(&left.stdout));
    // The victim ran throughout.
    assert_eq!(crate::stream::instance(&http, &tg, &good, &victim).await["state"], "running");
    p.cleanup().await;
}
