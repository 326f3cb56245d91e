-- Platform store: everything the platform must remember across restarts lives here.

-- Credentials of each tenant's coredms database (one database and one login per tenant).
create table tenant_coredms (
    tenant      text primary key,
    backend     text not null check (backend in ('postgres', 'mongodb')),
    database    text not null,
    username    text not null,
    password    text not null,
    created_at  timestamptz not null default now()
);

-- Tenants' programs. Each install is a new version; files live under the data folder at `dir`.
create table apps (
    id          uuid primary key,
    tenant      text not null,
    name        text not null,
    version     integer not null,
    kind        text not null check (kind in ('batch', 'stream')),
    entrypoint  text not null,
    dir         text not null,
    sha256      text not null,
    size_bytes  bigint not null,
    created_at  timestamptz not null default now(),
    unique (tenant, name, version)
);

-- One row per staged file. `state` moves detected -> queued -> running [-> retry_wait -> queued]
-- and ends in exactly one of succeeded, rejected, failed.
create table jobs (
    id                  uuid primary key,
    tenant              text not null,
    file_name           text not null,
    staging_path        text not null,
    work_path           text not null,
    state               text not null check (state in
                            ('detected', 'queued', 'running', 'retry_wait', 'succeeded', 'rejected', 'failed')),
    reason              text,
    detail              text,
    size_bytes          bigint,
    checksum            text,
    format              text,
    route_app           text,
    app_version         integer,
    attempts            integer not null default 0,
    max_attempts        integer not null default 1,
    not_before          timestamptz,
    records_ingested    bigint,
    records_rejected    bigint,
    bytes_read          bigint,
    app_message         text,
    exit_code           integer,
    signal              integer,
    log                 text,
    log_dropped_bytes   bigint not null default 0,
    pid                 integer,
    pid_start_ticks     bigint,
    duplicate_of        uuid,
    final_path          text,
    detected_at         timestamptz not null default now(),
    admitted_at         timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz,
    run_ms              bigint
);

create index jobs_by_tenant_time on jobs (tenant, detected_at desc, id desc);
create index jobs_by_tenant_state on jobs (tenant, state, detected_at desc);
create index jobs_open on jobs (state) where state in ('detected', 'queued', 'running', 'retry_wait');
create index jobs_admitted on jobs (tenant, admitted_at) where admitted_at is not null;
create index jobs_by_checksum on jobs (tenant, checksum) where checksum is not null;

-- Every state change of every job, with why.
create table job_events (
    id      bigserial primary key,
    job_id  uuid not null references jobs (id),
    tenant  text not null,
    at      timestamptz not null default now(),
    state   text not null,
    message text not null
);

create index job_events_by_job on job_events (job_id, id);
