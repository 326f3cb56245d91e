//! The sandbox itself, run directly (no platform around it): what a confined program sees and can do,
//! how its limits hold, and what it costs to start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mysimbdp::runtime::process::{self, Exit, ProcessSpec, Stopped};
use mysimbdp::runtime::sandbox::{cgroup::Limits, paths, Account, Confined, Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;

use mysimbdp_e2e::bin;

struct Lab {
    dir: tempfile::TempDir,
    sandbox: Arc<Sandbox>,
}

impl Lab {
    fn new() -> Lab {
        let dir = mysimbdp_e2e::scratch_dir();
        let config = SandboxConfig { init: Some(bin("mysimbdp-sandbox")), uid_base: 2_000_000_000 };
        let sandbox = Sandbox::start(&config, dir.path()).expect("the sandbox starts on this host");
        Lab { dir, sandbox: Arc::new(sandbox) }
    }

    /// An app folder holding one shell script `run`.
    fn app(&self, script: &str) -> PathBuf {
        let app = self.dir.path().join(format!("app-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&app).unwrap();
        std::fs::write(app.join("run"), format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(app.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        app
    }

    fn spec(&self, app: &Path, input: Option<PathBuf>, limits: Limits) -> ProcessSpec {
        let args = input.iter().map(|i| Path::new(paths::INPUT).join(i.file_name().unwrap()).into()).collect();
        ProcessSpec {
            program: Path::new(paths::APP).join("run"),
            args,
            cwd: paths::WORK.into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), paths::WORK.into())],
            memory: None,
            resident_memory: None,
            cpu_time: None,
            timeout: Some(Duration::from_secs(30)),
            grace: Duration::from_millis(500),
            log_limit: 1 << 20,
            result_file: Some(paths::RESULT_FILE.into()),
            confined: Some((
                self.sandbox.clone(),
                Confined {
                    account: Account { uid: 2_000_000_077, name: "lab".into() },
                    app_dir: app.to_owned(),
                    input,
                    lake: None,
                    limits,
                },
            )),
        }
    }
}

fn limits() -> Limits {
    Limits { memory: 256 << 20, pids: 64, cpus: Some(1.0) }
}

async fn run(spec: ProcessSpec) -> process::ProcessOutcome {
    process::run(spec, &CancellationToken::new(), |_, _| {}).await.expect("the run starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confined_program_sees_its_sandbox_and_nothing_else() {
    let lab = Lab::new();
    // As a job's input: alone in a folder of its own (the folder is what the sandbox shows).
    std::fs::create_dir(lab.dir.path().join("job")).unwrap();
    let input = lab.dir.path().join("job/in.csv");
    std::fs::write(&input, b"a,b\n1,2\n").unwrap();
    let secret = lab.dir.path().join("secret");
    std::fs::write(&secret, b"the platform's key").unwrap();
    let app = lab.app(&format!(
        r#"set -u
echo "id: $(id -u) $(id -g)"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
echo "procs: $(cat /proc/[0-9]*/comm 2>/dev/null | sort -u | tr '\n' ' ')"
echo "root: $(ls / | tr '\n' ' ')"
echo "input: $(cat "$1")"
cat {secret} 2>/dev/null && echo "LEAK: read the host file"
cat /proc/1/environ 2>/dev/null && echo "LEAK: read init's environment"
touch /usr/x 2>/dev/null && echo "LEAK: wrote /usr"
touch /x 2>/dev/null && echo "LEAK: wrote /"
touch /app/x 2>/dev/null && echo "LEAK: wrote /app"
touch /lake/x 2>/dev/null && echo "LEAK: wrote /lake"
[ -z "$(ls -A /lake)" ] || echo "LEAK: /lake holds something"
echo hi > "$1" 2>/dev/null && echo "LEAK: wrote the input"
echo ok > /work/w && echo ok > /tmp/t && echo "writes: work and tmp"
unshare -U true 2>/dev/null && echo "LEAK: a new user namespace"
echo '{{"records_ingested": 2}}' > /work/result.json"#,
        secret = secret.display()
    ));
    let out = run(lab.spec(&app, Some(input.clone()), limits())).await;
    assert_eq!((out.exit, out.stopped), (Exit::Code(0), Stopped::No), "{}", out.log);
    let log = &out.log;
    assert!(!log.contains("LEAK"), "{log}");
    assert!(log.contains("id: 2000000077 2000000077"), "{log}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(log.contains(&format!("{set}:\t0000000000000000")), "{set}: {log}");
    }
    assert!(log.contains("NoNewPrivs:\t1") && log.contains("Seccomp:\t2"), "{log}");
    // The init, the shell and what the shell runs: no process of the host's.
    let procs: Vec<&str> = log.lines().find_map(|l| l.strip_prefix("procs: ")).unwrap().split_whitespace().collect();
    let ours = ["cat", "mysimbdp-sandbo", "run", "sort", "tr"]; // `run` is the script (and its subshells)
    assert!(procs.contains(&"mysimbdp-sandbo") && procs.iter().all(|p| ours.contains(p)), "{procs:?}: {log}");
    let root = log.lines().find_map(|l| l.strip_prefix("root: ")).unwrap();
    let mut entries: Vec<&str> = root.split_whitespace().collect();
    entries.sort();
    // `lake` is a lake sink's mount point; empty and read-only for every other program.
    assert_eq!(
        entries,
        ["app", "bin", "dev", "etc", "input", "lake", "lib", "lib64", "proc", "sbin", "tmp", "usr", "var", "work"]
    );
    assert!(log.contains("input: a,b\n1,2"), "{log}");
    assert!(log.contains("writes: work and tmp"), "{log}");
    assert_eq!(std::fs::read(&input).unwrap(), b"a,b\n1,2\n", "the input is unchanged");
    assert_eq!(out.result.unwrap().unwrap(), b"{\"records_ingested\": 2}\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_ends_with_its_program_whatever_it_left_running() {
    let lab = Lab::new();
    let marker = format!("sandbox-orphan-{}", uuid::Uuid::new_v4().simple());
    // A child in its own session, holding stdout, that would sleep for 15 minutes.
    let app = lab.app(&format!("setsid sh -c 'exec -a {marker} sleep 900' & echo started"));
    let started = std::time::Instant::now();
    let out = run(lab.spec(&app, None, limits())).await;
    assert_eq!(out.exit, Exit::Code(0), "{}", out.log);
    assert!(started.elapsed() < Duration::from_secs(5), "the run waited for the orphan: {:?}", started.elapsed());
    let left = std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(left.stdout.is_empty(), "the orphan outlived the run: {}", String::from_utf8_lossy(&left.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_and_processes_are_bounded_for_the_whole_run() {
    let lab = Lab::new();
    // A child process (not the program itself) grows past the limit.
    let app = lab.app("sh -c 'a=$(head -c 300000000 /dev/zero | tr \"\\0\" a); echo survived'; echo parent done");
    let out = run(lab.spec(&app, None, Limits { memory: 64 << 20, pids: 64, cpus: None })).await;
    let Stopped::OverMemory { resident, limit } = out.stopped else { panic!("{:?}: {}", out.stopped, out.log) };
    assert_eq!(limit.0, 64 << 20);
    assert!(resident.is_some_and(|r| r.0 >= 60 << 20), "peak {resident:?}");
    assert!(!out.log.contains("survived"), "{}", out.log);

    // A fork bomb stops at the run's process limit and ends with the run.
    let app = lab.app("b() { b | b & }; b; sleep 2; echo bombed");
    let started = std::time::Instant::now();
    let mut spec = lab.spec(&app, None, Limits { memory: 256 << 20, pids: 32, cpus: Some(0.5) });
    spec.timeout = Some(Duration::from_secs(5));
    let out = run(spec).await;
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(out.log.contains("Resource temporarily unavailable") || out.log.contains("fork"), "{}", out.log);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_result_file_is_refused_without_blocking() {
    let lab = Lab::new();
    for (script, why) in [
        ("mkfifo /work/result.json", "a FIFO"),
        ("ln -s /dev/zero /work/result.json", "symbolic link"),
        ("head -c 2000000 /dev/zero > /work/result.json", "over the 1048576-byte bound"),
    ] {
        let app = lab.app(script);
        let out = tokio::time::timeout(Duration::from_secs(20), run(lab.spec(&app, None, limits())))
            .await
            .unwrap_or_else(|_| panic!("`{script}` hung the run"));
        let err = out.result.expect("a result file was there").expect_err(script);
        assert!(err.contains(why), "{script}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_go_on_when_the_fork_server_is_killed() {
    let lab = Lab::new();
    let app = lab.app("echo fine");
    assert_eq!(run(lab.spec(&app, None, limits())).await.exit, Exit::Code(0));
    let server = lab.sandbox.forkserver_pid().expect("started by the first run");
    // SAFETY: plain syscall on the test's own child.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    // The next run finds it gone, starts another, and runs.
    let out = run(lab.spec(&app, None, limits())).await;
    assert_eq!((out.exit, out.log.as_str()), (Exit::Code(0), "fine\n"));
    assert_ne!(lab.sandbox.forkserver_pid(), Some(server), "a new fork server");
}
