//! Test support: start the real platform against the real PostgreSQL with a fresh platform database,
//! fresh tenant ids (hence fresh coredms databases and logins) and fresh folders per test, so tests
//! run in parallel. Services come from `scripts/services.sh up` (`.local/env`); a test that cannot
//! reach them fails with a message saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysimbdp::apps::{AppKind, InstallRequest, Registry};
use mysimbdp::batch::BatchConfig;
use mysimbdp::store::{self, jobs::Job, Db};
use mysimbdp::tenant::TenantId;
use tokio_util::sync::CancellationToken;

/// A setting of the local services: the first of `vars` set in the environment, else the last one's
/// line in `.local/env` (tests run by hand). Fails loudly when the services were never started.
fn service_setting(vars: &[&str]) -> String {
    if let Some(v) = vars.iter().find_map(|v| std::env::var(v).ok()) {
        return v;
    }
    let name = vars.last().expect("at least one variable");
    let env_file = workspace_root().join(".local/env");
    let prefix = format!("{name}=");
    std::fs::read_to_string(&env_file)
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned)))
        .unwrap_or_else(|| {
            panic!("{name} is not set and {} has none: run `scripts/services.sh up` first", env_file.display())
        })
}

/// The admin URL of the test PostgreSQL.
pub fn pg_url() -> String {
    service_setting(&["MYSIMBDP_TEST_PG_URL"])
}

/// The platform store's own login (not a superuser), whose database each test platform gets.
pub fn store_url() -> String {
    service_setting(&["MYSIMBDP_TEST_STORE_URL"])
}

/// The test's Kafka-API broker.
pub fn kafka_brokers() -> String {
    service_setting(&["MYSIMBDP_TEST_KAFKA_BROKERS", "MYSIMBDP_KAFKA_BROKERS"])
}

/// The container engine's API (Podman's Docker-compatible service from `scripts/services.sh`).
pub fn container_socket() -> String {
    service_setting(&["MYSIMBDP_TEST_CONTAINER_SOCKET", "MYSIMBDP_CONTAINER_SOCKET"])
}

/// `url` with its database replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("url has a database part");
    format!("{base}/{db}")
}

/// The login a `postgres://login:password@...` URL names.
fn login_of(url: &str) -> &str {
    url.split("://").nth(1).and_then(|r| r.split(':').next()).expect("a login in the URL")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_owned()
}

/// A binary of the workspace (built by `cargo build --workspace --bins` before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` before the tests", path.display());
    path
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// An agreement with the given batch section (indented two spaces under `batch:`).
pub fn agreement(tenant: &str, batch: &str) -> String {
    format!("version: 1\ntenant: {tenant}\nname: Test tenant {tenant}\nbatch:\n{batch}\napps:\n  max_apps: 20\n  max_app_size: 1GiB\n")
}

/// A platform under test: its folders, its store, and (while running) the platform itself.
pub struct TestPlatform {
    pub dir: tempfile::TempDir,
    pub tenants_dir: PathBuf,
    pub staging_dir: PathBuf,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database: String,
    pub db: Db,
    pub batch: BatchConfig,
    /// The API's token key, fresh per test.
    pub jwt_secret: String,
    /// The key the platform seals tenants' secrets with (64 hex digits).
    pub secrets_key: String,
    /// This platform's consumer-group prefix on the shared test broker.
    pub cluster: String,
    /// `start` runs the monitor in this process too (false: the test runs it as its own process).
    pub monitor_in_process: bool,
    /// The PostgreSQL server's superuser URL: the coredms admin, and where test databases are made.
    pub admin_url: String,
    /// The slowest an upload may be (the platform's default unless a test sets it).
    pub min_upload_rate: mysimbdp::api::upload::MinRate,
    /// How long finished work is kept (`--retention`); absent: for ever.
    pub retention: Option<Duration>,
    /// The broker the platform uses: the shared test broker unless a test brings its own.
    pub brokers: String,
    /// Where the in-process platform's API listens (see `api_url`).
    api_addr: Option<std::net::SocketAddr>,
    tenants: Vec<TenantId>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    process: Option<Child>,
    /// Small pools of administrator connections to the tenants' coredms (see `coredms_admin`).
    coredms_pools: std::sync::Mutex<std::collections::HashMap<String, sqlx::PgPool>>,
    /// Whether `cleanup` dropped its databases (if not, dropping the platform does).
    dropped: bool,
}

pub fn fast_batch_config() -> BatchConfig {
    BatchConfig {
        workers: 4,
        rescan_interval: Duration::from_millis(200),
        log_limit: 16 << 10,
        kill_grace: Duration::from_millis(500),
        retry_backoff: Duration::from_millis(100),
        lease: Duration::from_secs(6),
    }
}

impl TestPlatform {
    /// Fresh folders and a fresh platform database; tenants are given as (id, agreement text).
    pub async fn new(tenants: &[(&str, String)]) -> Self {
        Self::on(&pg_url(), &store_url(), tenants).await
    }

    /// As `new`, on the PostgreSQL server of `admin` (its superuser URL) and `store` (the store's
    /// login on it): a server of the test's own that it may stop and start.
    pub async fn on(admin: &str, store: &str, tenants: &[(&str, String)]) -> Self {
        init_test_logging();
        let admin = admin.to_owned();
        let database = format!("mysimbdp_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = connect_admin(&admin).await;
        // Owned by the store's own login, as on a real installation: the platform never runs its
        // store as a superuser.
        let store = store.to_owned();
        let owner = login_of(&store);
        let template = store_template(&mut conn, &store).await;
        let create = format!("create database {database} owner {owner} template {template}");
        sqlx::Executor::execute(&mut conn, create.as_str()).await.expect("create test database");
        let database_url = with_database(&store, &database);
        let db = store::connect(&database_url).await.expect("connect to test database");
        let dir = scratch_dir();
        let (tenants_dir, staging_dir, data_dir) =
            (dir.path().join("tenants"), dir.path().join("staging"), dir.path().join("data"));
        for d in [&tenants_dir, &staging_dir, &data_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut ids = Vec::new();
        for (t, text) in tenants {
            std::fs::write(tenants_dir.join(format!("{t}.yaml")), text).unwrap();
            ids.push(TenantId::parse(t).unwrap());
        }
        TestPlatform {
            dir,
            tenants_dir,
            staging_dir,
            data_dir,
            database_url,
            database,
            db,
            batch: fast_batch_config(),
            jwt_secret: uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string(),
            secrets_key: uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string(),
            cluster: unique("mysimbdp-test"),
            monitor_in_process: true,
            admin_url: admin.clone(),
            min_upload_rate: Default::default(),
            retention: None,
            brokers: kafka_brokers(),
            api_addr: None,
            tenants: ids,
            running: None,
            process: None,
            coredms_pools: Default::default(),
            dropped: false,
        }
    }

    pub fn config(&self) -> mysimbdp::Config {
        mysimbdp::Config {
            database_url: self.database_url.clone(),
            coredms_url: self.admin_url.clone(),
            tenants_dir: self.tenants_dir.clone(),
            staging_dir: self.staging_dir.clone(),
            data_dir: self.data_dir.clone(),
            batch: self.batch.clone(),
            api: Some(mysimbdp::config::ApiConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                jwt_secret: self.jwt_secret.clone().into_bytes(),
                page_cache: 4 << 20,
                min_upload_rate: self.min_upload_rate,
            }),
            kafka_brokers: Some(self.brokers.clone()),
            batch_role: true,
            stream_role: true,
            monitor_role: self.monitor_in_process,
            cluster: self.cluster.clone(),
            container_socket: Some(container_socket()),
            sandbox: Some(mysimbdp::runtime::sandbox::SandboxConfig {
                init: Some(bin("mysimbdp-sandbox")),
                uid_base: mysimbdp::runtime::sandbox::DEFAULT_UID_BASE,
            }),
            retention: self.retention,
            secrets_key: Some(mysimbdp::config::Redacted(self.secrets_key.clone())),
            connect_bin: Some(bin("mysimbdp-connect")),
        }
    }

    /// Where the running platform's API listens: as `Platform::build` said for one in this process,
    /// as the address file says for a `mysimbdp serve` process.
    pub fn api_url(&self) -> String {
        if let Some(addr) = self.api_addr {
            return format!("http://{addr}");
        }
        let addr = std::fs::read_to_string(self.data_dir.join("api.addr")).expect("the platform wrote api.addr");
        format!("http://{}", addr.trim())
    }

    /// A token signed with this platform's key.
    pub fn token(&self, tenant: Option<&str>) -> String {
        use mysimbdp::api::auth::{Keys, Role};
        let keys = Keys::new(self.jwt_secret.as_bytes()).unwrap();
        let role = if tenant.is_some() { Role::Tenant } else { Role::Operator };
        keys.mint(role, tenant.map(|t| self.tenant(t)).as_ref(), Some("test"), Duration::from_secs(3600)).unwrap()
    }

    pub async fn wait_api(&self) {
        let file = self.data_dir.join("api.addr");
        eventually(Duration::from_secs(30), "the API to listen", async || file.exists()).await;
    }

    /// Starts the platform in this process (what `mysimbdp serve` runs); its API listens once this
    /// returns.
    pub async fn start(&mut self) {
        let shutdown = CancellationToken::new();
        let platform = mysimbdp::Platform::build(self.config(), shutdown.clone()).await.expect("building the platform");
        self.api_addr = platform.api_addr();
        let handle = tokio::spawn(platform.run_until_stopped());
        self.running = Some((shutdown, handle));
        self.wait_provisioned().await;
    }

    /// Starts the platform as a separate `mysimbdp serve` process (for kill -9).
    pub async fn start_process(&mut self) {
        self.api_addr = None;
        let _ = std::fs::remove_file(self.data_dir.join("api.addr"));
        self.process = Some(self.spawn_serve("api,batch,stream,monitor", "platform.log"));
        self.wait_provisioned().await;
        self.wait_api().await;
    }

    /// `mysimbdp serve --roles <roles>` against this platform's store, folders and broker, its
    /// output in `<test dir>/<log>`. The caller owns the process.
    pub fn spawn_serve(&self, roles: &str, log: &str) -> Child {
        let c = self.config();
        Command::new(bin("mysimbdp"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MYSIMBDP_ROLES", roles)
            .env("MYSIMBDP_DATABASE_URL", &c.database_url)
            .env("MYSIMBDP_COREDMS_URL", &c.coredms_url)
            .env("MYSIMBDP_TENANTS_DIR", &c.tenants_dir)
            .env("MYSIMBDP_STAGING_DIR", &c.staging_dir)
            .env("MYSIMBDP_DATA_DIR", &c.data_dir)
            .env("MYSIMBDP_BATCH_WORKERS", c.batch.workers.to_string())
            .env("MYSIMBDP_RESCAN_INTERVAL", "200ms")
            .env("MYSIMBDP_RETRY_BACKOFF", "100ms")
            .env("MYSIMBDP_KILL_GRACE", "500ms")
            .env("MYSIMBDP_BATCH_LEASE", "6s")
            .env("MYSIMBDP_API_LISTEN", "127.0.0.1:0")
            .env("MYSIMBDP_JWT_SECRET", &self.jwt_secret)
            .env("MYSIMBDP_SECRETS_KEY", &self.secrets_key)
            .env("MYSIMBDP_CONNECT_BIN", bin("mysimbdp-connect"))
            .env("MYSIMBDP_KAFKA_BROKERS", c.kafka_brokers.clone().unwrap_or_default())
            .env("MYSIMBDP_CLUSTER", &c.cluster)
            .env("MYSIMBDP_CONTAINER_SOCKET", c.container_socket.clone().unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(log)).unwrap())
            .spawn()
            .expect("spawn mysimbdp serve")
    }

    /// Runs a `mysimbdp` command against this platform: its store, and its API with an operator's token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin("mysimbdp"));
        if self.data_dir.join("api.addr").exists() {
            cmd.env("MYSIMBDP_URL", self.api_url()).env("MYSIMBDP_TOKEN", self.token(None));
        }
        cmd.args(args)
            .env("MYSIMBDP_DATABASE_URL", &self.database_url)
            .env("MYSIMBDP_TENANTS_DIR", &self.tenants_dir)
            .env("MYSIMBDP_STAGING_DIR", &self.staging_dir)
            .env("MYSIMBDP_DATA_DIR", &self.data_dir)
            .output()
            .expect("run mysimbdp")
    }

    /// kill -9 of the platform process.
    pub fn kill9(&mut self) {
        let mut child = self.process.take().expect("platform process running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Stops the in-process platform gracefully.
    pub async fn stop(&mut self) {
        if let Some((shutdown, handle)) = self.running.take() {
            shutdown.cancel();
            handle.await.expect("platform task").expect("platform run");
        }
    }

    pub async fn wait_provisioned(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut admin = connect_admin(&self.admin_url).await;
        for t in &self.tenants {
            loop {
                // The credentials are stored before the database is made, closed to others and opened
                // to the tenant's login (its entry in the ACL): wait for that last step.
                let closed: Option<bool> = sqlx::query_scalar(
                    "select coalesce(datacl::text like '%' || $1 || '=%', false) from pg_database where datname = $1",
                )
                .bind(t.coredms_name())
                .fetch_optional(&mut admin)
                .await
                .unwrap();
                if store::coredms::get(&self.db, t).await.unwrap().is_some()
                    && self.staging_dir.join(t.as_str()).is_dir()
                    && closed == Some(true)
                {
                    break;
                }
                if let Some((_, h)) = &self.running {
                    assert!(!h.is_finished(), "the platform stopped during start-up");
                }
                assert!(Instant::now() < deadline, "tenant {t} was not provisioned within 30s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn tenant(&self, t: &str) -> TenantId {
        TenantId::parse(t).unwrap()
    }

    /// Installs an app from a local file, as `mysimbdp install-app` does.
    pub async fn install(&self, tenant: &str, name: &str, path: &Path) {
        let agreement =
            mysimbdp::agreement::ServiceAgreement::load(&self.tenants_dir.join(format!("{tenant}.yaml"))).unwrap();
        Registry::new(self.db.clone(), &self.data_dir)
            .unwrap()
            .install(&agreement, InstallRequest { name: Some(name), kind: AppKind::Batch }, path)
            .await
            .unwrap_or_else(|e| panic!("installing {name}: {e}"));
    }

    /// Installs a shell script as an app.
    pub async fn install_script(&self, tenant: &str, name: &str, script: &str) {
        let path = self.dir.path().join(format!("{name}.sh"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        self.install(tenant, name, &path).await;
    }

    /// Installs a batch app made of a shell script and the workspace binaries it names, which sit
    /// beside it in the app's folder (the script finds them as `$APP/<name>`): an app sees nothing
    /// of the host but its own folder and the system's.
    pub async fn install_bundle(&self, tenant: &str, name: &str, script: &str, binaries: &[&str]) {
        let path = self.dir.path().join(format!("{name}.tar.gz"));
        std::fs::write(&path, bundle(name, "batch", script, binaries)).unwrap();
        self.install(tenant, name, &path).await;
    }

    /// Drops a file the way the staging rules ask: written as `.part`, then renamed into place.
    pub fn drop_file(&self, tenant: &str, name: &str, content: &[u8]) -> PathBuf {
        let dir = self.staging_dir.join(tenant);
        std::fs::create_dir_all(&dir).unwrap();
        let part = dir.join(format!("{name}.part"));
        std::fs::write(&part, content).unwrap();
        let target = dir.join(name);
        std::fs::rename(&part, &target).unwrap();
        target
    }

    /// Waits until the job for `file` reaches a final state, and returns it.
    pub async fn wait_final(&self, tenant: &str, file: &str) -> Job {
        self.wait_final_within(tenant, file, Duration::from_secs(60)).await
    }

    pub async fn wait_final_within(&self, tenant: &str, file: &str, within: Duration) -> Job {
        let deadline = Instant::now() + within;
        loop {
            let jobs = self.jobs_for(tenant, file).await;
            if let Some(j) = jobs.iter().find(|j| j.state().is_final()) {
                return j.clone();
            }
            if let Some((_, h)) = &self.running {
                assert!(!h.is_finished(), "the platform stopped while waiting for {file}");
            }
            assert!(
                Instant::now() < deadline,
                "{file} of {tenant} did not reach a final state within {within:?}: {jobs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the file system to follow a final job: the store commits the outcome first and the
    /// file is moved right after (recovery finishes the move if the platform dies in between).
    pub async fn wait_moved(&self, job: &Job) -> PathBuf {
        let target = PathBuf::from(job.final_path.clone().expect("a final job has a final path"));
        let path = target.clone();
        eventually(Duration::from_secs(10), &format!("{} moved to {}", job.file_name, target.display()), async || {
            path.exists() && !Path::new(&job.work_path).exists()
        })
        .await;
        target
    }

    pub async fn jobs_for(&self, tenant: &str, file: &str) -> Vec<Job> {
        let filter = store::jobs::ListFilter { file_name: Some(file.into()), limit: 100, ..Default::default() };
        store::jobs::list(&self.db, &self.tenant(tenant), &filter).await.unwrap()
    }

    pub async fn all_jobs(&self, tenant: &str) -> Vec<Job> {
        let filter = store::jobs::ListFilter { limit: 100_000, ..Default::default() };
        store::jobs::list(&self.db, &self.tenant(tenant), &filter).await.unwrap()
    }

    /// Events (state, message) of a job, oldest first.
    pub async fn events(&self, tenant: &str, job: &Job) -> Vec<(String, String)> {
        store::jobs::events(&self.db, &self.tenant(tenant), job.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.state, e.message))
            .collect()
    }

    /// The tenant's coredms database, opened with the platform's admin login, from a pool kept for the
    /// test: tests count documents several times a second while they wait, and a new login each time
    /// costs the server a process and a SCRAM exchange (676 of one suite run's 2,924 logins were these).
    pub async fn coredms_admin(&self, tenant: &str) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
        let pool = {
            let mut pools = self.coredms_pools.lock().unwrap();
            let url = with_database(&self.admin_url, &self.tenant(tenant).coredms_name());
            let pool = pools.entry(tenant.to_owned()).or_insert_with(|| {
                sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_lazy(&url).expect("a coredms URL")
            });
            pool.clone()
        };
        pool.acquire().await.unwrap_or_else(|e| panic!("cannot reach the coredms of {tenant} ({e})"))
    }

    /// The last `n` lines the platform process logged (`start_process`; an in-process platform logs
    /// only with `MYSIMBDP_TEST_LOG`), for a failure message: what the platform saw meanwhile.
    pub fn platform_log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("platform.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Documents in a tenant's collection (0 if the collection does not exist).
    pub async fn count_docs(&self, tenant: &str, collection: &str) -> i64 {
        let mut c = self.coredms_admin(tenant).await;
        let exists: bool =
            sqlx::query_scalar("select to_regclass($1) is not null").bind(collection).fetch_one(&mut *c).await.unwrap();
        if !exists {
            return 0;
        }
        sqlx::query_scalar(&format!("select count(*) from \"{collection}\"")).fetch_one(&mut *c).await.unwrap()
    }

    /// One document by `_id`.
    pub async fn doc(&self, tenant: &str, collection: &str, id: &str) -> serde_json::Value {
        let mut c = self.coredms_admin(tenant).await;
        sqlx::query_scalar(&format!("select doc from \"{collection}\" where _id = $1"))
            .bind(id)
            .fetch_one(&mut *c)
            .await
            .unwrap_or_else(|e| panic!("document {id} in {collection} of {tenant}: {e}"))
    }

    /// The tenant's coredms view as apps get it.
    pub async fn tenant_coredms_url(&self, tenant: &str) -> String {
        let creds = store::coredms::get(&self.db, &self.tenant(tenant)).await.unwrap().expect("tenant provisioned");
        let base = self.admin_url.clone();
        let hostpart = base.split('@').nth(1).expect("url with host").rsplit_once('/').unwrap().0.to_owned();
        format!("postgres://{}:{}@{hostpart}/{}", creds.username, creds.password, creds.database)
    }

    /// Stops everything and removes the test's databases (best effort).
    pub async fn cleanup(mut self) {
        self.stop().await;
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever the test did (crashes included), the store's running disk totals are exact.
        let off = mysimbdp::store::jobs::disk_totals_off(&self.db).await.expect("reading the disk totals");
        assert!(off.is_empty(), "running disk totals (tenant, total, sum of jobs) differ: {off:?}");
        self.db.close().await;
        let pools: Vec<sqlx::PgPool> = self.coredms_pools.lock().unwrap().drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.close().await;
        }
        drop_databases(&self.admin_url, &self.databases()).await;
        self.dropped = true;
    }

    /// The test's own databases: its store and its tenants' coredms.
    fn databases(&self) -> Vec<String> {
        self.tenants.iter().map(|t| t.coredms_name()).chain([self.database.clone()]).collect()
    }
}

/// Drops `databases` and the logins of the same names (best effort: never panics, as it also runs
/// while a failed test unwinds).
async fn drop_databases(admin: &str, databases: &[String]) {
    use sqlx::{Connection, Executor};
    let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(admin)).await
    else {
        return;
    };
    for n in databases {
        let _ = conn.execute(format!("drop database if exists {n} with (force)").as_str()).await;
        if n.starts_with("coredms_") {
            let _ = conn.execute(format!("drop role if exists {n}").as_str()).await;
        }
    }
}

/// A database migrated to `migrations/` that each test's store is copied from: cheaper than
/// migrating each one afresh. One per server and set of migrations (its name carries their
/// checksums), made by whichever test finds it missing and kept for the next runs.
async fn store_template(admin: &mut sqlx::PgConnection, store: &str) -> String {
    use sqlx::Executor;
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sqlx::migrate!("../migrations").iter().for_each(|m| (m.version, &m.checksum).hash(&mut hasher));
    let name = format!("mysimbdp_template_{:016x}", hasher.finish());
    let complete = format!("select exists (select from pg_database where datname = '{name}' and datistemplate)");
    let complete = async |admin: &mut sqlx::PgConnection| -> bool {
        sqlx::query_scalar(complete.as_str()).fetch_one(admin).await.expect("looking for the store template")
    };
    if complete(admin).await {
        return name;
    }
    // One test makes it while the others wait (an advisory lock of the server's `postgres` database,
    // where every admin session is); it is marked a template only once migrated, so a half-made one
    // (its test killed) is made again. Nobody else may connect to it: no copy can be made while
    // anyone is (a hostile app would try).
    admin.execute("select pg_advisory_lock(7265537)").await.expect("waiting to make the store template");
    if !complete(admin).await {
        for sql in [
            format!("drop database if exists {name} with (force)"),
            format!("create database {name} owner {}", login_of(store)),
            format!("revoke all on database {name} from public"),
        ] {
            admin.execute(sql.as_str()).await.expect("create the store template");
        }
        let db = store::connect(&with_database(store, &name)).await.expect("connect to the store template");
        store::migrate(&db).await.expect("migrate the store template");
        db.close().await;
        admin.execute(format!("alter database {name} is_template true").as_str()).await.expect("mark the template");
    }
    admin.execute("select pg_advisory_unlock(7265537)").await.expect("letting others copy the store template");
    name
}

/// A test that panics never reaches `cleanup`; its platform process must not outlive it.
impl Drop for TestPlatform {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((shutdown, _)) = &self.running {
            shutdown.cancel();
        }
        if !self.dropped {
            // Its databases too, or every failed run leaves some on the server for good (hundreds
            // were found, each costing the server an autovacuum visit a minute). On a thread of its
            // own: this runs inside the test's runtime, which cannot be blocked on.
            let (admin, databases) = (self.admin_url.clone(), self.databases());
            block_on_aside(move || async move { drop_databases(&admin, &databases).await });
        }
    }
}

/// Runs the future `work` makes to its end from a `Drop` inside a test's runtime, which cannot be
/// blocked on: on a thread and a runtime of its own.
pub fn block_on_aside<F: std::future::Future<Output = ()>>(work: impl FnOnce() -> F + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        runtime.map(|r| r.block_on(work()))
    })
    .join();
}

/// Where tests make their folders: the host's tmpfs (`/dev/shm`) where it has a writable one. A
/// suite run creates and deletes hundreds of thousands of files (staged files, jobs' folders,
/// unpacked apps, each sandbox's `/etc`); on an ext4 without a journal, as on these machines, the
/// kernel looks for every new inode past the recently deleted ones, a large share of the suite's CPU.
pub fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let writable = tempfile::tempdir_in(shm).is_ok();
        if writable {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        }
    })
    .clone()
}

/// A fresh folder under `scratch_root`, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("mysimbdp-test-").tempdir_in(scratch_root()).expect("a scratch folder")
}

/// Turns on the platform's logs in tests when `MYSIMBDP_TEST_LOG` is set (e.g. `mysimbdp=debug`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("MYSIMBDP_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

pub async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL ({e}): run `scripts/services.sh up` first"))
}

/// Waits until `cond` holds, or panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Generated data from the workspace's `gen-data` tool.
pub fn gen_data(kind: &str, rows: u64, bad_every: u64, seed: u64) -> Vec<u8> {
    let out = Command::new(bin("gen-data"))
        .args([kind, &rows.to_string(), &bad_every.to_string(), &seed.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "gen-data failed");
    out.stdout
}

/// An HTTP answer, kept whole so tests can compare answers byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A problem document's `detail`, after checking the answer is one with this status.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.content_type, "application/problem+json", "{}", self.text());
        let p = self.json();
        assert_eq!(p["status"], status);
        p["detail"].as_str().expect("a problem has a detail").to_owned()
    }
}

/// The platform's API over real HTTP on loopback.
pub struct Http {
    client: reqwest::Client,
    pub base: String,
}

impl Http {
    pub fn new(base: String) -> Self {
        Http { client: reqwest::Client::new(), base }
    }

    /// `method path` with an optional bearer token and an optional (content type, body).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, Vec<u8>)>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ctype, bytes)) = body {
            req = req.header("content-type", ctype).body(bytes);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let body = resp.bytes().await.unwrap().to_vec();
        Reply { status, content_type, body }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None).await
    }
}

impl TestPlatform {
    pub fn http(&self) -> Http {
        Http::new(self.api_url())
    }

    /// How many passes the platform's loop `name` has made (`mysimbdp_loop_passes_total`):
    /// `batch_rescan`, `stream_reconcile` or `monitor_sweep`.
    pub async fn loop_passes(&self, name: &str) -> u64 {
        let text = self.http().get("/metrics", &self.token(None)).await.text();
        let series = format!("mysimbdp_loop_passes_total{{pass=\"{name}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
    }

    /// Waits until the loop `name` has made `n` more passes: whatever it would do about the state
    /// before this call, it has had `n` chances to do (an absence checked after this is observed, not
    /// guessed from a clock).
    pub async fn after_passes(&self, name: &str, n: u64) {
        let goal = self.loop_passes(name).await + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        // Asked every 200 ms, no pass being shorter: each ask renders the metrics (a store query).
        while self.loop_passes(name).await < goal {
            assert!(Instant::now() < deadline, "timed out after 60s waiting for {n} more {name} passes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A workspace binary without its debug information (a tenth of its size), kept beside the binary
/// (`<name>.stripped`) and made again only when the binary is newer.
pub fn stripped(name: &str) -> Vec<u8> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap();
    let program = bin(name);
    let path = program.with_file_name(format!("{name}.stripped"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&path) < modified(&program) {
        // Written aside and renamed, so another test process never reads half a file.
        let part = program.with_file_name(format!("{name}.stripped.{}", std::process::id()));
        let status = Command::new("strip").arg("-o").arg(&part).arg(&program).status();
        assert!(status.is_ok_and(|s| s.success()), "strip (binutils) is needed to bundle {name} into a test app");
        std::fs::rename(&part, &path).unwrap();
    }
    std::fs::read(path).unwrap()
}

/// An app archive: `app.yaml`, the script as `run` (with `APP` set to the app's folder), and the
/// workspace binaries it names beside it.
pub fn bundle(name: &str, kind: &str, script: &str, binaries: &[&str]) -> Vec<u8> {
    // Tests upload the same apps again and again; compressing a 14 MB binary each time is CPU the
    // rest of the suite waits for.
    type Made = std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>;
    static MADE: std::sync::LazyLock<Made> = std::sync::LazyLock::new(Default::default);
    let key = [name, kind, script].iter().chain(binaries).copied().collect::<Vec<_>>().join("\0");
    if let Some(archive) = MADE.lock().unwrap().get(&key) {
        return archive.clone();
    }
    let archive = make_bundle(name, kind, script, binaries);
    MADE.lock().unwrap().insert(key, archive.clone());
    archive
}

fn make_bundle(name: &str, kind: &str, script: &str, binaries: &[&str]) -> Vec<u8> {
    let manifest = format!("name: {name}\nkind: {kind}\nentrypoint: run\nversion: 1.0.0\n");
    let script = format!("#!/bin/sh\nAPP=$(dirname \"$0\")\n{script}\n");
    let programs: Vec<(String, Vec<u8>)> = binaries.iter().map(|b| (b.to_string(), stripped(b))).collect();
    let mut members =
        vec![Member::File("app.yaml", manifest.as_bytes(), 0o644), Member::File("run", script.as_bytes(), 0o755)];
    members.extend(programs.iter().map(|(n, bytes)| Member::File(n, bytes, 0o755)));
    tar_gz(&members)
}

/// One member of a test archive. Names and link targets are written raw, so archives that a careful
/// packer would refuse to make (`../x`, `/etc/x`) can be made.
pub enum Member<'a> {
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    /// A hard link to an earlier member.
    HardLink(&'a str, &'a str),
    /// A member of another kind (device, FIFO), with no content.
    Special(&'a str, tar::EntryType),
}

pub fn tar_gz(members: &[Member<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for m in members {
        let mut h = tar::Header::new_gnu();
        let (name, data): (&str, &[u8]) = match m {
            Member::File(name, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                (name, data)
            }
            Member::Symlink(name, target) | Member::HardLink(name, target) => {
                let kind =
                    if matches!(m, Member::Symlink(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                let link = &mut h.as_gnu_mut().unwrap().linkname;
                link[..target.len()].copy_from_slice(target.as_bytes());
                (name, &[][..])
            }
            Member::Special(name, kind) => {
                h.set_entry_type(*kind);
                h.set_mode(0o644);
                h.set_size(0);
                (name, &[][..])
            }
        };
        let raw = &mut h.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A PostgreSQL server of the test's own, on a free loopback port, that the test may stop and start
/// (the shared one serves every other test). Run as the `postgres` user, as `scripts/services.sh`
/// runs the shared one; removed when dropped.
pub struct PrivatePg {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (scripts/services.sh installs them)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = scratch_root().join(format!("mysimbdp-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePg { dir, bin, port };
        let owned = Command::new("chown").arg("-R").arg("postgres:").arg(&pg.dir).status().unwrap();
        assert!(owned.success(), "chown {} to postgres", pg.dir.display());
        pg.run("initdb", &["-D", &pg.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 200\nfsync = off\n",
            pg.dir.display()
        );
        let conf_path = pg.dir.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        pg.start_again();
        let psql = pg.bin.join("psql");
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(psql).current_dir("/");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]);
        for sql in [
            "create role mysimbdp superuser login password 'test'",
            "create role mysimbdp_store login password 'test'",
            "create database mysimbdp owner mysimbdp_store",
            "revoke connect on database postgres from public",
        ] {
            cmd.args(["-c", sql]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "setting up the private PostgreSQL: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir("/")
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The superuser URL (the coredms admin) and the store login's URL.
    pub fn admin_url(&self) -> String {
        format!("postgres://mysimbdp:test@127.0.0.1:{}/postgres", self.port)
    }

    pub fn store_url(&self) -> String {
        format!("postgres://mysimbdp_store:test@127.0.0.1:{}/mysimbdp", self.port)
    }

    /// Stops the server at once (`immediate`: as a crash would; connections are cut).
    pub fn stop(&self) {
        let log = self.dir.join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-m", "immediate", "-w", "stop"]);
    }

    pub fn start_again(&self) {
        let log = self.dir.join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "start"]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .current_dir("/")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Kafka-API broker of the test's own (tansu with its SQLite storage, on a free loopback port) that
/// the test may kill and start again: unlike the shared broker (in memory), it keeps its topics,
/// messages and committed offsets across a restart, as a production broker does. Killed when dropped.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    pub port: u16,
    process: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> Self {
        let dir = scratch_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = PrivateBroker { dir, port, process: None };
        broker.start_again();
        broker
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker on its port and storage, and waits until it listens.
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "the broker runs already");
        let bin = service_setting(&["MYSIMBDP_TEST_BROKER_BIN"]);
        let url = format!("tcp://{}", self.addr());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("broker.log")).unwrap();
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // A path relative to the broker's working folder: tansu reads `sqlite://<path>` so.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the broker {bin}: {e}"));
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "the private broker does not listen on {}: {log}", self.addr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9: the broker ends as by a crash, mid-request.
    pub fn kill9(&mut self) {
        let mut child = self.process.take().expect("the broker runs");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes `topic` on the test broker, with `partitions`.
pub async fn create_topic(partitions: i32, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let made = admin.create_topics([&new], &AdminOptions::new()).await;
    for r in made.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// A connector's process, killed when dropped: a failed test leaves none running.
pub struct Connector(pub Child);

impl Connector {
    pub fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }

    /// Its output so far, once killed.
    pub fn output(mut self) -> String {
        use std::io::Read as _;
        self.kill();
        let mut s = String::new();
        self.0.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    }

    /// Its output, once it has exited by itself.
    pub fn output_at_exit(mut self) -> (std::process::ExitStatus, String) {
        let status = self.0.wait().unwrap();
        (status, self.output())
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A consumer of `topic`'s first partition from its start, in a group of its own (nothing committed).
pub fn partition_reader(topic: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    c
}
