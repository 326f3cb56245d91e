//! Commands that drive the control plane over HTTP: the same endpoints a tenant's own tooling uses.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::Client;
use super::table::{bytes, cell, print_table, rows, time};

#[derive(Args, Clone)]
pub struct Remote {
    /// The platform's API (default: the address a local `serve` wrote to <data dir>/api.addr, else
    /// http://127.0.0.1:8080).
    #[arg(long, env = "MYSIMBDP_URL", global = true)]
    url: Option<String>,
    /// Bearer token (see `mysimbdp token`).
    #[arg(long, env = "MYSIMBDP_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The tenant to act on; defaults to the tenant a tenant token is for. Operators name it.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Who the token says you are.
    Whoami,
    /// Tenants you can see, or one tenant's agreement and usage (`--tenant`).
    Tenants,
    /// Tenants' apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Files in staging.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Ingestion jobs: one per staged file.
    #[command(subcommand)]
    Ingestions(IngestionsCommand),
    /// Stream app instances: start, list, show, stop, log.
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// The tenant's secrets (a source database's URL): values go in, never come out.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The stream apps' metrics reports with the monitor's verdicts, and dropped reports by reason.
    Reports {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        instance: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The monitor's notifications and what the stream manager did about each.
    Notifications {
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Ingestion statistics (operators: every tenant unless --tenant).
    Stats {
        /// RFC 3339 time; default 7 days ago.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AppsCommand {
    /// Upload one executable or a .tar.gz holding app.yaml, as the app's next version.
    Upload {
        path: PathBuf,
        /// Required for a single executable; must match app.yaml for an archive.
        #[arg(long)]
        name: Option<String>,
        /// batch or stream (single executables only).
        #[arg(long)]
        kind: Option<String>,
    },
    List,
    /// Every version of one app.
    Show {
        name: String,
    },
    /// Delete every version of an app.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Write a secret, or replace its value: read from a file, or from standard input (never from
    /// the command line, which other users can see).
    Put {
        name: String,
        /// The file holding the value (trailing newline dropped); default: standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Upload a local file into staging (it is ingested as soon as it is complete).
    Put {
        path: PathBuf,
        /// Name in staging (default: the local file's name).
        #[arg(long = "as")]
        name: Option<String>,
    },
    /// Files waiting in staging.
    List,
}

#[derive(Subcommand)]
pub enum IngestionsCommand {
    /// Jobs, newest first.
    List {
        /// detected, queued, running, retry_wait, succeeded, rejected, failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        file: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (its next cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One job with its history and the app's log.
    Show { id: String },
    /// Only the app's log.
    Log { id: String },
    /// Run a failed job again (or, with --allow-duplicate, a file rejected as a duplicate).
    Retry {
        id: String,
        #[arg(long)]
        allow_duplicate: bool,
    },
}

#[derive(Subcommand)]
pub enum InstancesCommand {
    /// Start instances of a stream app (at most the agreement's max_instances in all).
    Start {
        app: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Version to run (default: the newest).
        #[arg(long)]
        version: Option<i32>,
    },
    /// Instances, newest first.
    List {
        #[arg(long)]
        app: Option<String>,
        /// starting, running, stopping, exited, failed, restarting
        #[arg(long)]
        state: Option<String>,
    },
    Show {
        id: String,
    },
    /// Stop one instance, or every instance of an app with --app.
    Stop {
        #[arg(required_unless_present = "app")]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        app: Option<String>,
    },
    /// The instance's output.
    Log {
        id: String,
    },
}

fn instance_rows(v: &Value) -> Vec<Vec<String>> {
    rows(v, |i| {
        vec![
            cell(i, "id"),
            cell(i, "app"),
            cell(i, "app_version"),
            cell(i, "state"),
            cell(i, "restarts_total"),
            cell(i, "pid"),
            time(i, "started_at"),
            cell(i, "detail"),
        ]
    })
}

const INSTANCE_HEADER: [&str; 8] = ["ID", "APP", "VERSION", "STATE", "RESTARTS", "PID", "STARTED", "DETAIL"];

impl Remote {
    pub fn tenant_flag(&self) -> Option<String> {
        self.tenant.clone()
    }

    fn client(&self, data_dir: &std::path::Path) -> anyhow::Result<Client> {
        let url = match &self.url {
            Some(u) => u.clone(),
            None => match std::fs::read_to_string(data_dir.join("api.addr")) {
                Ok(addr) => format!("http://{}", addr.trim()),
                Err(_) => "http://127.0.0.1:8080".into(),
            },
        };
        Client::new(&url, self.token.clone())
    }

    /// `--tenant`, else the `tenant` claim of the token (read, not verified: the server verifies).
    fn tenant(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.tenant {
            return Ok(t.clone());
        }
        let claim = self.token.as_deref().and_then(|t| t.split('.').nth(1)).and_then(|p| {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()?;
            serde_json::from_slice::<Value>(&raw).ok()?.get("tenant")?.as_str().map(str::to_owned)
        });
        claim.ok_or_else(|| anyhow::anyhow!("name the tenant with --tenant (an operator's token is for no tenant)"))
    }

    fn print(&self, v: &Value, table: impl FnOnce(&Value)) -> anyhow::Result<ExitCode> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        } else {
            table(v);
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn some(name: &'static str, v: &Option<String>) -> Vec<(&'static str, String)> {
    v.iter().map(|s| (name, s.clone())).collect()
}

pub async fn run(remote: Remote, command: RemoteCommand, data_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let c = remote.client(&data_dir)?;
    match command {
        RemoteCommand::Whoami => whoami(&remote, &c).await,
        RemoteCommand::Tenants => tenants(&remote, &c).await,
        RemoteCommand::Apps(cmd) => apps(&remote, &c, cmd).await,
        RemoteCommand::Secrets(cmd) => secrets(&remote, &c, cmd).await,
        RemoteCommand::Files(cmd) => files(&remote, &c, cmd).await,
        RemoteCommand::Ingestions(cmd) => ingestions(&remote, &c, cmd).await,
        RemoteCommand::Instances(cmd) => instances(&remote, &c, cmd).await,
        RemoteCommand::Reports { app, instance, since, limit } => {
            reports(&remote, &c, app, instance, since, limit).await
        }
        RemoteCommand::Notifications { since, limit } => notifications(&remote, &c, since, limit).await,
        RemoteCommand::Stats { since, until } => stats(&remote, &c, since, until).await,
    }
}

async fn whoami(remote: &Remote, c: &Client) -> anyhow::Result<ExitCode> {
    let v = c.get("/v1/whoami", &[]).await?;
    remote.print(&v, |v| println!("{} {} {}", cell(v, "role"), cell(v, "tenant"), cell(v, "sub")))
}

async fn tenants(remote: &Remote, c: &Client) -> anyhow::Result<ExitCode> {
    if remote.tenant.is_some() {
        let t = remote.tenant()?;
        let v = c.get(&format!("/v1/tenants/{t}"), &[]).await?;
        return remote.print(&v, |v| {
            let u = &v["usage"];
            println!("tenant {t}: agreement {}", if v["agreement"].is_null() { "not in force" } else { "in force" });
            println!(
                "files last hour {} of {} | bytes last day {} of {} | queued {} running {} of {} | apps {} of {}",
                cell(u, "files_last_hour"),
                cell(u, "max_files_per_hour"),
                bytes(u, "bytes_last_day"),
                bytes(u, "max_bytes_per_day"),
                cell(u, "queued"),
                cell(u, "running"),
                cell(u, "max_concurrent_jobs"),
                cell(u, "apps"),
                cell(u, "max_apps")
            );
            for e in v["agreement_errors"].as_array().into_iter().flatten() {
                println!("agreement file error: {}: {}", cell(e, "field"), cell(e, "message"));
            }
        });
    }
    let v = c.get("/v1/tenants", &[]).await?;
    remote.print(&v, |v| {
        let r = rows(v, |t| {
            vec![cell(t, "tenant"), cell(t, "name"), cell(t, "agreement_in_force"), cell(t, "batch"), cell(t, "stream")]
        });
        print_table(&["TENANT", "NAME", "AGREEMENT", "BATCH", "STREAM"], r);
    })
}

async fn apps(remote: &Remote, c: &Client, cmd: AppsCommand) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    match cmd {
        AppsCommand::Upload { path, name, kind } => {
            let mut q = some("name", &name);
            q.extend(some("kind", &kind));
            let v = c.upload(Method::POST, &format!("/v1/tenants/{t}/apps"), &q, &path).await?;
            remote.print(&v, |v| {
                println!(
                    "installed {} version {} ({}, {}) for tenant {t}",
                    cell(v, "name"),
                    cell(v, "version"),
                    cell(v, "kind"),
                    bytes(v, "size_bytes")
                )
            })
        }
        AppsCommand::List => {
            let v = c.get(&format!("/v1/tenants/{t}/apps"), &[]).await?;
            remote.print(&v, |v| {
                let r = rows(v, |a| {
                    vec![
                        cell(a, "name"),
                        cell(a, "kind"),
                        cell(a, "latest"),
                        cell(a, "versions"),
                        time(a, "updated_at"),
                    ]
                });
                print_table(&["NAME", "KIND", "LATEST", "VERSIONS", "UPDATED"], r);
            })
        }
        AppsCommand::Show { name } => {
            let v = c.get(&format!("/v1/tenants/{t}/apps/{name}"), &[]).await?;
            remote.print(&v, |v| {
                let r = rows(v, |a| {
                    vec![
                        cell(a, "version"),
                        cell(a, "kind"),
                        cell(a, "entrypoint"),
                        bytes(a, "size_bytes"),
                        cell(a, "sha256").chars().take(16).collect(),
                        time(a, "created_at"),
                    ]
                });
                print_table(&["VERSION", "KIND", "ENTRYPOINT", "SIZE", "SHA256", "INSTALLED"], r);
            })
        }
        AppsCommand::Delete { name } => {
            c.delete(&format!("/v1/tenants/{t}/apps/{name}")).await?;
            println!("deleted app {name} of tenant {t}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn secrets(remote: &Remote, c: &Client, cmd: SecretsCommand) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    match cmd {
        SecretsCommand::Put { name, from_file } => {
            let mut value = match &from_file {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
                None => std::io::read_to_string(std::io::stdin()).context("reading the value from standard input")?,
            };
            while value.ends_with(['\n', '\r']) {
                value.pop();
            }
            let v = c.put(&format!("/v1/tenants/{t}/secrets/{name}"), &serde_json::json!({ "value": value })).await?;
            remote
                .print(&v, |v| println!("stored secret {} of tenant {t} ({})", cell(v, "name"), bytes(v, "size_bytes")))
        }
        SecretsCommand::List => {
            let v = c.get(&format!("/v1/tenants/{t}/secrets"), &[]).await?;
            remote.print(&v, |v| {
                let r = rows(v, |s| vec![cell(s, "name"), bytes(s, "size_bytes"), time(s, "updated_at")]);
                print_table(&["NAME", "SIZE", "UPDATED"], r);
            })
        }
        SecretsCommand::Delete { name } => {
            c.delete(&format!("/v1/tenants/{t}/secrets/{name}")).await?;
            println!("deleted secret {name} of tenant {t}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn files(remote: &Remote, c: &Client, cmd: FilesCommand) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    match cmd {
        FilesCommand::Put { path, name } => {
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow::anyhow!("give the file a name with --as"))?
                    .to_owned(),
            };
            let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
            let v = c
                .upload(Method::PUT, &format!("/v1/tenants/{t}/staging/{}", encoded.replace('+', "%20")), &[], &path)
                .await?;
            remote.print(&v, |v| {
                println!(
                    "staged {} ({}) for tenant {t}; follow it with: mysimbdp ingestions list --file {}",
                    cell(v, "file"),
                    bytes(v, "size_bytes"),
                    cell(v, "file")
                )
            })
        }
        FilesCommand::List => {
            let v = c.get(&format!("/v1/tenants/{t}/staging"), &[]).await?;
            remote.print(&v, |v| {
                let r = rows(v, |f| vec![cell(f, "file"), bytes(f, "size_bytes"), time(f, "modified_at")]);
                print_table(&["FILE", "SIZE", "MODIFIED"], r);
            })
        }
    }
}

async fn ingestions(remote: &Remote, c: &Client, cmd: IngestionsCommand) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    match cmd {
        IngestionsCommand::List { status, file, since, until, limit, cursor } => {
            let mut q = vec![("limit", limit.to_string())];
            for (k, v) in [("status", status), ("file", file), ("since", since), ("until", until), ("cursor", cursor)] {
                q.extend(some(k, &v));
            }
            let v = c.get(&format!("/v1/tenants/{t}/ingestions"), &q).await?;
            remote.print(&v, |v| {
                let r = rows(&v["items"], |j| {
                    vec![
                        cell(j, "id"),
                        cell(j, "file_name"),
                        cell(j, "state"),
                        bytes(j, "size_bytes"),
                        cell(j, "records_ingested"),
                        cell(j, "run_ms"),
                        time(j, "detected_at"),
                        cell(j, "detail"),
                    ]
                });
                print_table(&["ID", "FILE", "STATE", "SIZE", "RECORDS", "RUN MS", "DETECTED", "DETAIL"], r);
                if let Some(next) = v["next_cursor"].as_str() {
                    println!("more: --cursor {next}");
                }
            })
        }
        IngestionsCommand::Show { id } => {
            let v = c.get(&format!("/v1/tenants/{t}/ingestions/{id}"), &[]).await?;
            let log = if remote.json {
                String::new()
            } else {
                c.get_text(&format!("/v1/tenants/{t}/ingestions/{id}/log")).await?
            };
            remote.print(&v, |j| {
                println!("{} {} ({}) for tenant {t}", cell(j, "id"), cell(j, "file_name"), cell(j, "state"));
                if !j["reason"].is_null() {
                    println!("reason: {}: {}", cell(j, "reason"), cell(j, "detail"));
                }
                println!(
                    "size {} | records ingested {} rejected {} | attempts {}/{} | app {} v{}",
                    bytes(j, "size_bytes"),
                    cell(j, "records_ingested"),
                    cell(j, "records_rejected"),
                    cell(j, "attempts"),
                    cell(j, "max_attempts"),
                    cell(j, "app"),
                    cell(j, "app_version")
                );
                println!("\nhistory:");
                for e in j["events"].as_array().into_iter().flatten() {
                    println!("  {} {:<10} {}", time(e, "at"), cell(e, "state"), cell(e, "message"));
                }
                if !log.is_empty() {
                    println!("\nlog ({} bytes dropped):\n{log}", cell(j, "log_dropped_bytes"));
                }
            })
        }
        IngestionsCommand::Log { id } => {
            print!("{}", c.get_text(&format!("/v1/tenants/{t}/ingestions/{id}/log")).await?);
            Ok(ExitCode::SUCCESS)
        }
        IngestionsCommand::Retry { id, allow_duplicate } => {
            let v = c
                .post(
                    &format!("/v1/tenants/{t}/ingestions/{id}/retry"),
                    &serde_json::json!({ "allow_duplicate": allow_duplicate }),
                )
                .await?;
            remote.print(&v, |v| println!("{} ({}) queued again for tenant {t}", cell(v, "id"), cell(v, "file_name")))
        }
    }
}

async fn instances(remote: &Remote, c: &Client, cmd: InstancesCommand) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    match cmd {
        InstancesCommand::Start { app, count, version } => {
            let body = serde_json::json!({ "count": count, "version": version });
            let v = c.post(&format!("/v1/tenants/{t}/apps/{app}/instances"), &body).await?;
            remote.print(&v, |v| print_table(&INSTANCE_HEADER, instance_rows(v)))
        }
        InstancesCommand::List { app, state } => {
            let mut q = some("app", &app);
            q.extend(some("state", &state));
            let v = c.get(&format!("/v1/tenants/{t}/instances"), &q).await?;
            remote.print(&v, |v| print_table(&INSTANCE_HEADER, instance_rows(&v["items"])))
        }
        InstancesCommand::Show { id } => {
            let v = c.get(&format!("/v1/tenants/{t}/instances/{id}"), &[]).await?;
            remote.print(&v, |v| print_table(&INSTANCE_HEADER, instance_rows(&Value::Array(vec![v.clone()]))))
        }
        InstancesCommand::Stop { id, app } => {
            let path = match (&id, &app) {
                (Some(id), _) => format!("/v1/tenants/{t}/instances/{id}"),
                (None, Some(app)) => format!("/v1/tenants/{t}/apps/{app}/instances"),
                (None, None) => anyhow::bail!("name an instance, or an app with --app"),
            };
            let v = c.delete_json(&path).await?;
            let v = if v.is_array() { v } else { Value::Array(vec![v]) };
            remote.print(&v, |v| print_table(&INSTANCE_HEADER, instance_rows(v)))
        }
        InstancesCommand::Log { id } => {
            print!("{}", c.get_text(&format!("/v1/tenants/{t}/instances/{id}/log")).await?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn reports(
    remote: &Remote,
    c: &Client,
    app: Option<String>,
    instance: Option<String>,
    since: Option<String>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    let mut q = vec![("limit", limit.to_string())];
    for (k, v) in [("app", app), ("instance", instance), ("since", since)] {
        q.extend(some(k, &v));
    }
    let v = c.get(&format!("/v1/tenants/{t}/reports"), &q).await?;
    remote.print(&v, |v| {
        let r = rows(&v["items"], |r| {
            vec![
                time(r, "received_at"),
                cell(r, "instance").chars().take(8).collect(),
                cell(r, "messages"),
                cell(r, "rejected"),
                cell(r, "processing_rate"),
                cell(r, "avg_ingestion_ms"),
                cell(r, "lag"),
                cell(r, "verdict"),
            ]
        });
        print_table(&["RECEIVED", "INSTANCE", "MESSAGES", "REJECTED", "RATE/S", "AVG MS", "LAG", "VERDICT"], r);
        let dropped = rows(&v["dropped"], |d| vec![cell(d, "reason"), cell(d, "count"), cell(d, "last_detail")]);
        if !dropped.is_empty() {
            println!();
            print_table(&["DROPPED", "COUNT", "LAST"], dropped);
        }
    })
}

async fn notifications(remote: &Remote, c: &Client, since: Option<String>, limit: u32) -> anyhow::Result<ExitCode> {
    let t = remote.tenant()?;
    let mut q = vec![("limit", limit.to_string())];
    q.extend(some("since", &since));
    let notes = c.get(&format!("/v1/tenants/{t}/notifications"), &q).await?;
    let actions = c.get(&format!("/v1/tenants/{t}/actions"), &q).await?;
    let both = serde_json::json!({ "notifications": notes["items"], "actions": actions["items"] });
    remote.print(&both, |v| {
        let n = rows(&v["notifications"], |n| {
            let reasons: Vec<String> = n["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{} {} (threshold {})", cell(r, "metric"), cell(r, "observed"), cell(r, "threshold")))
                .collect();
            vec![time(n, "at"), cell(n, "app"), cell(n, "kind"), cell(n, "action"), reasons.join("; ")]
        });
        print_table(&["AT", "APP", "KIND", "ASKS", "REASONS"], n);
        println!();
        let a = rows(&v["actions"], |a| {
            vec![time(a, "at"), cell(a, "app"), cell(a, "action"), cell(a, "outcome"), cell(a, "detail")]
        });
        print_table(&["AT", "APP", "ACTION", "OUTCOME", "DETAIL"], a);
    })
}

async fn stats(remote: &Remote, c: &Client, since: Option<String>, until: Option<String>) -> anyhow::Result<ExitCode> {
    let mut q = some("since", &since);
    q.extend(some("until", &until));
    let path = match &remote.tenant {
        Some(t) => format!("/v1/tenants/{t}/stats"),
        None => match remote.tenant() {
            Ok(t) => format!("/v1/tenants/{t}/stats"),
            Err(_) => "/v1/stats".into(),
        },
    };
    let v = c.get(&path, &q).await?;
    remote.print(&v, |v| {
        let line = |d: &Value| {
            vec![
                cell(d, "tenant"),
                cell(d, "day"),
                cell(d, "files"),
                cell(d, "succeeded"),
                cell(d, "rejected"),
                cell(d, "failed"),
                bytes(d, "bytes_ingested"),
                cell(d, "records_ingested"),
                cell(d, "records_rejected"),
                cell(d, "run_ms_mean"),
                cell(d, "run_ms_p50"),
                cell(d, "run_ms_p95"),
                d["throughput_bytes_per_s"]
                    .as_f64()
                    .map_or("-".into(), |b| format!("{}/s", mysimbdp::units::ByteSize(b as u64))),
            ]
        };
        let header = [
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
        ];
        println!("{} to {}", time(v, "since"), time(v, "until"));
        print_table(&header, rows(&v["totals"], line));
        println!();
        print_table(&header, rows(&v["by_day"], line));
        let reasons =
            rows(&v["reasons"], |r| vec![cell(r, "tenant"), cell(r, "state"), cell(r, "reason"), cell(r, "count")]);
        if !reasons.is_empty() {
            println!();
            print_table(&["TENANT", "OUTCOME", "REASON", "FILES"], reasons);
        }
    })
}
