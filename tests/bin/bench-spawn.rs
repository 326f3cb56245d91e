//! `bench-spawn [runs]`: what starting a program costs, confined and not, side by side in one run:
//! the same no-op app (`/bin/true` through a shell script, as a tenant's app would be) run through
//! the platform's own runner `runs` times each way, interleaved so both see the same machine. Prints
//! the raw figures (per-run wall time, and the CPU time of the platform and of the runs' processes).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysimbdp::runtime::process::{self, Exit, ProcessSpec};
use mysimbdp::runtime::sandbox::{cgroup::Limits, paths, Account, Confined, Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;

fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU seconds of a process and of its reaped children (the fork server's, whose children are the
/// sandboxed runs), from /proc/PID/stat.
fn process_cpu(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (11..15).map(|i| fields[i].parse::<f64>().unwrap_or(0.0)).sum::<f64>() / hz
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(500), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let init = std::env::current_exe()?.with_file_name("mysimbdp-sandbox");
    let sandbox = Arc::new(Sandbox::start(&SandboxConfig { init: Some(init), uid_base: 2_000_000_000 }, dir.path())?);
    let app = dir.path().join("app");
    std::fs::create_dir(&app)?;
    std::fs::write(app.join("run"), "#!/bin/sh\nexit 0\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(app.join("run"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755))?;
    let spec = |confined: bool| ProcessSpec {
        program: if confined { Path::new(paths::APP).join("run") } else { app.join("run") },
        args: Vec::new(),
        cwd: if confined { paths::WORK.into() } else { dir.path().to_owned() },
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        memory: None,
        resident_memory: None,
        cpu_time: None,
        timeout: Some(Duration::from_secs(10)),
        grace: Duration::from_secs(1),
        log_limit: 1 << 16,
        result_file: None,
        confined: confined.then(|| {
            let account = Account { uid: 2_000_000_001, name: "bench".into() };
            let limits = Limits { memory: 256 << 20, pids: 256, cpus: None };
            (sandbox.clone(), Confined { account, app_dir: app.clone(), input: None, lake: None, limits })
        }),
    };
    println!("== command: bench-spawn {runs}");
    println!("== sandbox: {}", sandbox.describe());
    println!("== CPU: the platform's own (this process), and the runs' (reaped children, the sandbox's fork server and its reaped inits included)");
    let mut wall = [Vec::new(), Vec::new()];
    let mut cpu = [[0.0f64; 2]; 2];
    for i in 0..runs * 2 {
        let confined = i % 2 == 1;
        let server = sandbox.forkserver_pid();
        let (own, children) =
            (cpu_seconds(libc::RUSAGE_SELF), cpu_seconds(libc::RUSAGE_CHILDREN) + process_cpu(server));
        let t = Instant::now();
        let out = process::run(spec(confined), &CancellationToken::new(), |_, _| {}).await?;
        wall[confined as usize].push(t.elapsed().as_secs_f64() * 1000.0);
        cpu[confined as usize][0] += cpu_seconds(libc::RUSAGE_SELF) - own;
        let server = server.or(sandbox.forkserver_pid());
        cpu[confined as usize][1] += cpu_seconds(libc::RUSAGE_CHILDREN) + process_cpu(server) - children;
        anyhow::ensure!(out.exit == Exit::Code(0), "run {i} ended {:?}: {}", out.exit, out.log);
    }
    println!(
        "\n{:<12} {:>6} {:>9} {:>9} {:>9} {:>16} {:>16}",
        "variant", "runs", "p50 ms", "p90 ms", "p99 ms", "platform CPU ms", "runs' CPU ms"
    );
    let mut medians = [0.0; 2];
    for (k, name) in [(0, "unconfined"), (1, "sandbox")] {
        let mut w = wall[k].clone();
        w.sort_by(f64::total_cmp);
        medians[k] = percentile(&w, 50.0);
        println!(
            "{name:<12} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>16.3} {:>16.3}",
            w.len(),
            percentile(&w, 50.0),
            percentile(&w, 90.0),
            percentile(&w, 99.0),
            cpu[k][0] / runs as f64 * 1000.0,
            cpu[k][1] / runs as f64 * 1000.0
        );
    }
    println!(
        "\nmedian start-to-exit, sandbox / unconfined: {:.2}x (+{:.2} ms)",
        medians[1] / medians[0],
        medians[1] - medians[0]
    );
    Ok(())
}
