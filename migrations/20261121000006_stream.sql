-- Stream ingestion: instances of tenants' stream apps, the metrics reports they publish, the
-- monitor's notifications and the manager's actions.

-- One row per instance. `desired` is what the control plane (or the manager's reaction) wants;
-- `state` is what the stream manager last saw. The manager reconciles the two, so a platform
-- restart finds every instance that should run and starts exactly one process for each.
create table stream_instances (
    id            uuid primary key,
    tenant        text not null,
    app           text not null,
    app_version   integer not null,
    runtime       text not null check (runtime in ('process', 'container')),
    desired       text not null check (desired in ('running', 'stopped')),
    state         text not null check (state in ('starting', 'running', 'stopping', 'exited', 'failed', 'restarting')),
    -- Restarts since the instance last ran stably; the agreement's max_restarts caps it.
    restarts      integer not null default 0,
    restarts_total integer not null default 0,
    pid           integer,
    start_ticks   bigint,
    container_id  text,
    exit_code     integer,
    exit_signal   integer,
    detail        text,
    -- Why it exists: "api" or the notification that scaled the app out.
    cause         text not null,
    created_at    timestamptz not null default now(),
    started_at    timestamptz,
    ended_at      timestamptz,
    updated_at    timestamptz not null default now()
);
create index stream_instances_by_tenant on stream_instances (tenant, app, created_at);
create index stream_instances_wanted on stream_instances (desired, state);

-- Every trusted report, with the lag the monitor measured and its verdict.
create table metrics_reports (
    id                 bigserial primary key,
    tenant             text not null,
    app                text not null,
    instance           uuid not null,
    window_start       timestamptz not null,
    window_end         timestamptz not null,
    messages           bigint not null,
    bytes              bigint not null,
    rejected           bigint not null,
    avg_ingestion_ms   double precision not null,
    p95_ingestion_ms   double precision not null,
    processing_rate    double precision not null,
    throughput_bytes_per_s double precision not null,
    lag                bigint,
    -- ok | idle (no input waiting: not judged) | breach
    verdict            text not null,
    received_at        timestamptz not null default now()
);
create index metrics_reports_by_tenant on metrics_reports (tenant, app, received_at);
create index metrics_reports_by_instance on metrics_reports (instance, received_at);

-- Reports that were not trusted, with why; counted per tenant the key claims (null: no key).
create table dropped_reports (
    id          bigserial primary key,
    tenant      text,
    key         text,
    reason      text not null,
    detail      text not null,
    received_at timestamptz not null default now()
);
create index dropped_reports_by_tenant on dropped_reports (tenant, received_at);

create table notifications (
    id        uuid primary key,
    tenant    text not null,
    app       text not null,
    instance  uuid,
    kind      text not null,
    action    text not null,
    reasons   jsonb not null,
    at        timestamptz not null
);
create index notifications_by_tenant on notifications (tenant, at);

-- What the manager did about a notification. One row per notification at most: a notification
-- read twice (after a crash) is not acted on twice.
create table stream_actions (
    id               bigserial primary key,
    tenant           text not null,
    app              text not null,
    notification     uuid unique,
    action           text not null,
    -- applied | skipped
    outcome          text not null,
    detail           text not null,
    instances_before integer not null,
    instances_after  integer not null,
    at               timestamptz not null default now()
);
create index stream_actions_by_tenant on stream_actions (tenant, app, at);

-- Wakes the stream manager when the wanted state of an instance changes.
create function stream_instances_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('mysimbdp_instances', new.tenant);
    return new;
end $$;
create trigger stream_instances_notify after insert or update of desired on stream_instances
    for each row execute function stream_instances_notify();
