//! Command-line interface: `serve` runs the platform; the other commands read and change its state
//! directly through the store (an HTTP client mode comes with the control plane).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use mysimbdp::agreement::ServiceAgreement;
use mysimbdp::apps::{AppKind, InstallRequest, Registry};
use mysimbdp::batch::BatchConfig;
use mysimbdp::store::{self, jobs::JobState};
use mysimbdp::tenant::TenantId;
use mysimbdp::units::{parse_duration, ByteSize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "mysimbdp", version, about = "Multi-tenant big-data ingestion platform")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "MYSIMBDP_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// The platform store (PostgreSQL).
    #[arg(long, env = "MYSIMBDP_DATABASE_URL")]
    database_url: String,
}

#[derive(Args, Clone)]
struct PathArgs {
    /// Folder of service agreements, one `<tenant>.yaml` each.
    #[arg(long, env = "MYSIMBDP_TENANTS_DIR", default_value = "tenants")]
    tenants_dir: PathBuf,
    /// Tenants' drop folders live under this one.
    #[arg(long, env = "MYSIMBDP_STAGING_DIR", default_value = "staging")]
    staging_dir: PathBuf,
    /// Platform-owned files: apps, work area, ingested and quarantined files.
    #[arg(long, env = "MYSIMBDP_DATA_DIR", default_value = ".local/data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (batch ingest manager) until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        paths: PathArgs,
        /// Admin URL of the coredms server (postgres:// or mongodb://); never handed to apps.
        #[arg(long, env = "MYSIMBDP_COREDMS_URL")]
        coredms_url: String,
        /// Apps running at once across all tenants (default: number of cores, at least 2).
        #[arg(long, env = "MYSIMBDP_BATCH_WORKERS")]
        workers: Option<usize>,
        /// How often staging folders are listed, e.g. 500ms.
        #[arg(long, env = "MYSIMBDP_RESCAN_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
        rescan_interval: Duration,
        /// Bytes of an app's output kept per job, e.g. 64KiB.
        #[arg(long, env = "MYSIMBDP_LOG_LIMIT", default_value = "64KiB", value_parser = ByteSize::parse)]
        log_limit: ByteSize,
        /// Time between SIGTERM and SIGKILL for apps that must stop.
        #[arg(long, env = "MYSIMBDP_KILL_GRACE", default_value = "5s", value_parser = parse_duration)]
        kill_grace: Duration,
        /// First retry delay of a failed job (doubles each retry).
        #[arg(long, env = "MYSIMBDP_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
        retry_backoff: Duration,
    },
    /// Apply the platform store's migrations and exit.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Service agreements.
    #[command(subcommand)]
    Agreement(AgreementCommand),
    /// Tenants' apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Ingestion jobs: one per staged file.
    #[command(subcommand)]
    Ingestions(IngestionsCommand),
    /// Ingestion statistics per tenant and day.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: Option<String>,
        /// How many days back.
        #[arg(long, default_value_t = 7)]
        days: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AgreementCommand {
    /// Validate agreement files; prints every error with file and field. Exit 1 if any is invalid.
    Check { files: Vec<PathBuf> },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Batch,
    Stream,
}

#[derive(Subcommand)]
enum AppsCommand {
    /// Install an app from a local file: one executable, or a .tar.gz holding app.yaml.
    Install {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        paths: PathArgs,
        #[arg(long)]
        tenant: String,
        /// App name (required for a single executable; must match app.yaml for an archive).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "batch")]
        kind: KindArg,
        path: PathBuf,
    },
    /// List a tenant's apps and versions.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum IngestionsCommand {
    /// List jobs, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: Option<String>,
        /// detected, queued, running, retry_wait, succeeded, rejected, failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        file: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run a failed job again (or, with --allow-duplicate, a file rejected as a duplicate). A running
    /// platform picks it up within seconds.
    Retry {
        #[command(flatten)]
        store: StoreArgs,
        id: Uuid,
        /// Ingest the file although the same content was ingested before.
        #[arg(long)]
        allow_duplicate: bool,
    },
    /// One job with its history and the app's log.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MYSIMBDP_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn tenant(s: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(s).map_err(anyhow::Error::msg)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            store,
            paths,
            coredms_url,
            workers,
            rescan_interval,
            log_limit,
            kill_grace,
            retry_backoff,
        } => {
            let defaults = BatchConfig::default();
            let config = mysimbdp::Config {
                database_url: store.database_url,
                coredms_url,
                tenants_dir: paths.tenants_dir,
                staging_dir: paths.staging_dir,
                data_dir: paths.data_dir,
                batch: BatchConfig {
                    workers: workers.unwrap_or(defaults.workers),
                    rescan_interval,
                    log_limit: log_limit.0 as usize,
                    kill_grace,
                    retry_backoff,
                },
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            mysimbdp::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { store } => {
            let db = store::connect(&store.database_url).await?;
            store::migrate(&db).await?;
            println!("platform store is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Agreement(AgreementCommand::Check { files }) => {
            let mut ok = true;
            for file in files {
                match ServiceAgreement::load(&file) {
                    Ok(a) => println!("{}: ok (tenant {})", file.display(), a.tenant),
                    Err(e) => {
                        ok = false;
                        println!("{e}");
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Apps(AppsCommand::Install { store, paths, tenant: t, name, kind, path }) => {
            let t = tenant(&t)?;
            let agreement_file = paths.tenants_dir.join(format!("{t}.yaml"));
            let agreement = ServiceAgreement::load(&agreement_file)?;
            let db = store::connect(&store.database_url).await?;
            store::migrate(&db).await?;
            let kind = match kind {
                KindArg::Batch => AppKind::Batch,
                KindArg::Stream => AppKind::Stream,
            };
            let app = Registry::new(db, &paths.data_dir)?
                .install(&agreement, InstallRequest { name: name.as_deref(), kind }, &path)
                .await?;
            println!(
                "installed {} version {} ({}, {} bytes) for tenant {t}",
                app.name, app.version, app.kind, app.size_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Apps(AppsCommand::List { store, tenant: t, json }) => {
            let t = tenant(&t)?;
            let db = store::connect(&store.database_url).await?;
            let apps = store::apps::list(&db, &t).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                let rows = apps
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.version.to_string(),
                            a.kind.clone(),
                            a.entrypoint.clone(),
                            a.size_bytes.to_string(),
                            a.created_at.format("%F %T").to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "VERSION", "KIND", "ENTRYPOINT", "BYTES", "INSTALLED"], rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingestions(IngestionsCommand::List { store, tenant: t, status, file, limit, json }) => {
            let filter = store::jobs::ListFilter {
                tenant: t.as_deref().map(tenant).transpose()?,
                state: status
                    .as_deref()
                    .map(|s| JobState::parse(s).with_context(|| format!("unknown status `{s}`")))
                    .transpose()?,
                file_name: file,
                since: None,
                until: None,
                limit: limit.clamp(1, 10_000),
            };
            let db = store::connect(&store.database_url).await?;
            let jobs = store::jobs::list(&db, &filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                let rows = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.to_string(),
                            j.tenant.clone(),
                            j.file_name.clone(),
                            j.state.clone(),
                            j.size_bytes.map_or("-".into(), |s| ByteSize(s as u64).to_string()),
                            j.records_ingested.map_or("-".into(), |n| n.to_string()),
                            j.run_ms.map_or("-".into(), |ms| format!("{ms}ms")),
                            j.detail.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["ID", "TENANT", "FILE", "STATE", "SIZE", "RECORDS", "RUN", "DETAIL"], rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingestions(IngestionsCommand::Retry { store, id, allow_duplicate }) => {
            let db = store::connect(&store.database_url).await?;
            let job = store::jobs::get_any(&db, id).await?.with_context(|| format!("no ingestion {id}"))?;
            let t = tenant(&job.tenant)?;
            store::jobs::retryable(&job, allow_duplicate)?;
            let from = PathBuf::from(job.final_path.clone().with_context(|| format!("job {id} has no file to retry"))?);
            anyhow::ensure!(from.exists(), "the file is no longer at {}", from.display());
            // File first, then the store: a crash in between leaves a final job with its file in the
            // work area, which recovery moves back to where the job says it is.
            mysimbdp::batch::layout::move_file(&from, std::path::Path::new(&job.work_path))?;
            if let Err(e) = store::jobs::retry(&db, &t, &job, allow_duplicate, job.max_attempts.max(1)).await {
                mysimbdp::batch::layout::move_file(std::path::Path::new(&job.work_path), &from)?;
                return Err(e.into());
            }
            let _ = std::fs::remove_file(format!("{}.reason.json", from.display()));
            println!("{} ({}) queued again for tenant {t}", job.id, job.file_name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingestions(IngestionsCommand::Show { store, id, json }) => {
            let db = store::connect(&store.database_url).await?;
            let job = store::jobs::get_any(&db, id).await?.with_context(|| format!("no ingestion {id}"))?;
            let t = tenant(&job.tenant)?;
            let events = store::jobs::events(&db, &t, id).await?;
            if json {
                let mut v = serde_json::to_value(&job)?;
                v["events"] = serde_json::to_value(&events)?;
                v["log"] = serde_json::Value::from(job.log.clone());
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{} {} ({}) for tenant {}", job.id, job.file_name, job.state, job.tenant);
                if let Some(r) = &job.reason {
                    println!("reason: {r}: {}", job.detail.clone().unwrap_or_default());
                }
                println!(
                    "size {} | records ingested {} rejected {} | attempts {}/{} | final {}",
                    job.size_bytes.map_or("-".into(), |s| ByteSize(s as u64).to_string()),
                    job.records_ingested.map_or("-".into(), |n| n.to_string()),
                    job.records_rejected.map_or("-".into(), |n| n.to_string()),
                    job.attempts,
                    job.max_attempts,
                    job.final_path.clone().unwrap_or_else(|| "-".into())
                );
                println!("\nhistory:");
                for e in events {
                    println!("  {} {:<10} {}", e.at.format("%F %T%.3f"), e.state, e.message);
                }
                if let Some(log) = &job.log {
                    println!("\nlog ({} bytes dropped):\n{log}", job.log_dropped_bytes);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { store, tenant: t, days, json } => {
            let t = t.as_deref().map(tenant).transpose()?;
            let db = store::connect(&store.database_url).await?;
            let since = chrono::Utc::now() - chrono::Duration::days(days.max(1));
            let by_day = store::stats::by_day(&db, t.as_ref(), since).await?;
            let reasons = store::stats::reasons(&db, t.as_ref(), since).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "by_day": by_day, "reasons": reasons }))?
                );
            } else {
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
                let rows = by_day
                    .iter()
                    .map(|d| {
                        vec![
                            d.tenant.clone(),
                            d.day.to_string(),
                            d.files.to_string(),
                            d.succeeded.to_string(),
                            d.rejected.to_string(),
                            d.failed.to_string(),
                            ByteSize(d.bytes_ingested as u64).to_string(),
                            d.records_ingested.to_string(),
                            d.records_rejected.to_string(),
                            ms(d.run_ms_mean),
                            ms(d.run_ms_p50),
                            ms(d.run_ms_p95),
                            d.throughput_bytes_per_s.map_or("-".into(), |b| format!("{}/s", ByteSize(b as u64))),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "TENANT",
                        "DAY",
                        "FILES",
                        "OK",
                        "REJECTED",
                        "FAILED",
                        "INGESTED",
                        "RECORDS",
                        "BAD ROWS",
                        "MEAN MS",
                        "P50 MS",
                        "P95 MS",
                        "THROUGHPUT",
                    ],
                    rows,
                );
                if !reasons.is_empty() {
                    println!();
                    let rows = reasons
                        .iter()
                        .map(|r| vec![r.tenant.clone(), r.state.clone(), r.reason.clone(), r.count.to_string()])
                        .collect();
                    print_table(&["TENANT", "OUTCOME", "REASON", "FILES"], rows);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        println!("(none)");
    }
    for row in rows {
        line(row);
    }
}
