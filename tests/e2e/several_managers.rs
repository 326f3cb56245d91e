//! Several platform processes on one store: two batch managers and two stream managers, killed with
//! `kill -9` at random (and the stream leader cut off from the store) while files are ingested and
//! stream apps run. Every file ends with exactly one outcome and one run per attempt, the coredms is
//! exact, no instance ever runs twice (seen from the processes themselves), and no manager takes
//! over the work of one that is alive.

use mysimbdp::domain::JobState;
use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysimbdp_e2e::{agreement, connect_admin, eventually, gen_data, pg_url, unique, TestPlatform};

use serde_json::Value;

use crate::stream::{
    instance, produce, reading, running_instance_ids, start, stream_agreement, stream_app, upload, wait_docs,
    wait_state, wait_topic, Stream,
};

/// The managers under test, by role, each a `mysimbdp serve` process that can be killed and started
/// again; killed when dropped.
struct Managers {
    procs: Vec<(&'static str, String, Child)>,
}

impl Managers {
    fn spawn(&mut self, p: &TestPlatform, role: &'static str, log: &str) {
        let child = p.spawn_serve(role, log);
        self.procs.push((role, log.to_owned(), child));
    }

    fn kill9(&mut self, i: usize) -> u32 {
        let child = &mut self.procs[i].2;
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        pid
    }

    fn respawn(&mut self, p: &TestPlatform, i: usize) {
        let (role, log) = (self.procs[i].0, self.procs[i].1.clone());
        // Appended to, so a run's log is not lost to the next.
        let log = format!("{log}.{}", uuid::Uuid::new_v4().simple());
        self.procs[i].2 = p.spawn_serve(role, &log);
    }
}

impl Drop for Managers {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn leader_handover() -> Duration {
    mysimbdp::stream::leader::HANDOVER
}

/// Job events recorded so far, across the tenants.
async fn job_events(p: &TestPlatform) -> i64 {
    sqlx::query_scalar("select count(*) from job_events").fetch_one(&p.db).await.unwrap()
}

/// Whether `files` jobs exist and all are final.
async fn all_final(p: &TestPlatform, files: u64) -> bool {
    let (open, total): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where state not in ('succeeded', 'rejected', 'failed')), count(*) from jobs",
    )
    .fetch_one(&p.db)
    .await
    .unwrap();
    open == 0 && total >= files as i64
}

/// A small deterministic generator (xorshift), seeded and printed so a failing run can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn managers_killed_at_random_do_every_file_once_and_never_run_an_instance_twice() {
    let (files, zoo_a, zoo_b) = (unique("several"), unique("zooa"), unique("zoob"));
    let batch = "  routes: [{files: \"*.csv\", app: slow-tortoise, timeout: 2m, memory: 1GiB}]\n  formats: [csv]\n  max_file_size: 100MiB\n  max_files_per_hour: 1000\n  max_bytes_per_day: 10GiB\n  max_concurrent_jobs: 4\n  retries: 1";
    let streams = Stream { partitions: 4, max_instances: 2, ..Stream::default() };
    let p = TestPlatform::new(&[
        (&files, agreement(&files, batch)),
        (&zoo_a, stream_agreement(&zoo_a, &streams)),
        (&zoo_b, stream_agreement(&zoo_b, &streams)),
    ])
    .await;
    p.install_bundle(&files, "slow-tortoise", "sleep 0.1; exec \"$APP/tortoise-csv\" \"$1\"", &["tortoise-csv"]).await;
    let mut m = Managers { procs: Vec::new() };
    m.spawn(&p, "api", "api.log");
    for (i, role) in ["batch", "batch", "stream", "stream"].into_iter().enumerate() {
        m.spawn(&p, role, &format!("{role}-{i}.log"));
    }
    p.wait_provisioned().await;
    p.wait_api().await;
    let http = p.http();
    let mut instance_ids = Vec::new();
    let mut owners = Vec::new();
    for zoo in [&zoo_a, &zoo_b] {
        let token = p.token(Some(zoo));
        upload(&http, &token, zoo, stream_app("tortoise-stream", "")).await;
        wait_topic(&format!("{zoo}.readings")).await;
        for inst in start(&http, &token, zoo, "tortoise-stream", 2).await {
            let id = inst["id"].as_str().unwrap().to_owned();
            wait_state(&http, &token, zoo, &id, "running", Duration::from_secs(60)).await;
            owners.push((zoo.clone(), token.clone(), id.clone()));
            instance_ids.push(id);
        }
    }

    // Watches the processes themselves: an instance id seen in two live programs at once is a
    // double run, whatever the store says.
    let watching = Arc::new(AtomicBool::new(true));
    let doubles: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (watching, doubles, zoos) = (watching.clone(), doubles.clone(), [zoo_a.clone(), zoo_b.clone()]);
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                for zoo in &zoos {
                    let ids = running_instance_ids(zoo);
                    let distinct: HashSet<&String> = ids.iter().collect();
                    if distinct.len() != ids.len() {
                        doubles.lock().unwrap().push(format!("{ids:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    const FILES: u64 = 300;
    const ROWS: u64 = 100;
    const LARGE_ROWS: u64 = 300_000;
    p.drop_file(&files, "large.csv", &gen_data("tortoise", LARGE_ROWS, 0, 7));
    for i in 0..FILES {
        p.drop_file(&files, &format!("small-{i:03}.csv"), &gen_data("tortoise", ROWS, 0, 1000 + i));
    }
    let messages = tokio::spawn({
        let (a, b) = (format!("{zoo_a}.readings"), format!("{zoo_b}.readings"));
        async move {
            for batch in 0..4 {
                let range = batch * 5_000..(batch + 1) * 5_000;
                produce(&a, range.clone().map(reading).collect()).await;
                produce(&b, range.map(reading).collect()).await;
            }
        }
    });

    // Chaos: kill -9 of a random manager (restarted at once), and once the stream leader's session
    // ended from the store's side while the process lives on.
    // MYSIMBDP_CHAOS_SEED=<the seed a failed run printed> replays that run's choices.
    let seed = std::env::var("MYSIMBDP_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("chaos seed {seed} (MYSIMBDP_CHAOS_SEED={seed} replays it)");
    let mut dice = Dice(seed);
    let mut killed_managers: HashSet<String> = HashSet::new();
    for round in 0..10 {
        // Between kills the work moves on: 50 to 200 more job events (about a second of it), or
        // every file is done.
        let goal = job_events(&p).await + 50 + dice.roll(150) as i64;
        eventually(Duration::from_secs(120), "the work to move on", async || {
            job_events(&p).await >= goal || all_final(&p, FILES + 1).await
        })
        .await;
        if round == 5 {
            let pids = |i: &[Value]| i.iter().map(|i| i["pid"].as_i64().unwrap_or(0)).collect::<Vec<_>>();
            let mut before = Vec::new();
            for (zoo, token, id) in &owners {
                before.push(instance(&http, token, zoo, id).await);
            }
            let mut admin = connect_admin(&pg_url()).await;
            let ended: Vec<(bool,)> = sqlx::query_as(
                "select pg_terminate_backend(pid) from pg_locks
                 where locktype = 'advisory' and objsubid = 1 and classid = 1836675945 and objid = 1835164784
                   and database = (select oid from pg_database where datname = $1) and granted",
            )
            .bind(&p.database)
            .fetch_all(&mut admin)
            .await
            .unwrap();
            eprintln!("round {round}: ended the stream leader's session ({} ended)", ended.len());
            // No kill until the successor runs every instance anew: a leader that went on regardless
            // would be seen (by the watcher above) running them beside it.
            let before = pids(&before);
            eventually(
                leader_handover() + Duration::from_secs(60),
                "the successor running every instance",
                async || {
                    let mut now = Vec::new();
                    for (zoo, token, id) in &owners {
                        now.push(instance(&http, token, zoo, id).await);
                    }
                    now.iter().all(|i| i["state"] == "running")
                        && pids(&now).iter().zip(&before).all(|(a, b)| a != b && *a != 0)
                },
            )
            .await;
            continue;
        }
        let i = 1 + dice.roll(4) as usize;
        let pid = m.procs[i].2.id() as i32;
        // Which batch manager this process is, to check later that only the dead were taken over.
        let ids: Vec<(uuid::Uuid,)> =
            sqlx::query_as("select id from batch_managers where pid = $1").bind(pid).fetch_all(&p.db).await.unwrap();
        m.kill9(i);
        killed_managers.extend(ids.into_iter().map(|(id,)| id.to_string()));
        eprintln!("round {round}: kill -9 of {} (pid {pid})", m.procs[i].1);
        m.respawn(&p, i);
    }
    messages.await.unwrap();

    eventually(Duration::from_secs(240), "every file in a final state", async || all_final(&p, FILES + 1).await).await;
    for zoo in [&zoo_a, &zoo_b] {
        wait_docs(&p, zoo, 20_000, Duration::from_secs(180)).await;
    }
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();

    // Every file exactly one job, succeeded, the coredms exact.
    let jobs = p.all_jobs(&files).await;
    assert_eq!(jobs.len() as u64, FILES + 1, "one job per file");
    for job in &jobs {
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
    assert_eq!(p.count_docs(&files, "readings").await, (FILES * ROWS + LARGE_ROWS) as i64);
    for job in &jobs {
        p.wait_moved(job).await;
    }

    // Nothing was done twice: an attempt starts only once the one before it ended (it failed and
    // waits to retry, it was put back, or its manager was killed and the job taken over), and only
    // managers that were killed were ever taken over.
    let events: Vec<(mysimbdp::domain::JobId, String, String)> =
        sqlx::query_as("select job_id, state, message from job_events order by id").fetch_all(&p.db).await.unwrap();
    let mut running: HashMap<mysimbdp::domain::JobId, bool> = HashMap::new();
    let (mut at_once, mut most_at_once) = (0i64, 0i64);
    let mut history: HashMap<mysimbdp::domain::JobId, Vec<String>> = HashMap::new();
    let mut retook = 0;
    for (job, state, message) in &events {
        history.entry(*job).or_default().push(format!("{state}: {message}"));
        let open = running.entry(*job).or_default();
        if let Some(rest) = message.strip_prefix("taken up by batch manager ") {
            retook += 1;
            let (to, from) = rest.split_once(" from ").unwrap_or((rest, ""));
            let from = from.split(',').next().unwrap_or_default();
            // A manager takes up again a claim it let go after an error (its lease ran out); any
            // other takeover must be of a manager that was killed.
            assert!(from == to || killed_managers.contains(from), "a live manager's job was taken over: {message}");
            at_once -= *open as i64;
            *open = false;
        } else if message.starts_with("attempt ") && message.contains(" started") {
            assert!(!*open, "a second run started while one ran: {:#?}", history[job]);
            *open = true;
            at_once += 1;
            most_at_once = most_at_once.max(at_once);
        } else if state != "running" {
            at_once -= *open as i64;
            *open = false;
        }
    }
    // The agreement's max_concurrent_jobs holds across both managers.
    assert!(most_at_once <= 4, "{most_at_once} of the tenant's jobs ran at once; max_concurrent_jobs is 4");
    for job in &jobs {
        let h = &history[&job.id];
        assert!(h.iter().any(|e| e.contains(" started with app version")), "{} never started: {h:#?}", job.file_name);
    }
    eprintln!(
        "{} batch managers killed; {retook} jobs taken over from them; at most {most_at_once} running at once",
        killed_managers.len()
    );

    // No instance ever ran twice, and each runs once now.
    let doubles = doubles.lock().unwrap().clone();
    assert!(doubles.is_empty(), "instances seen running twice: {doubles:?}");
    instance_ids.sort();
    eventually(Duration::from_secs(60), "every instance running once", async || {
        let mut now: Vec<String> = [&zoo_a, &zoo_b].iter().flat_map(|z| running_instance_ids(z)).collect();
        now.sort();
        now == instance_ids
    })
    .await;
    drop(m);
    p.cleanup().await;
}
