-- Several batch managers on one store: a job being admitted or run is leased by the manager doing
-- it (owner, expiry, fencing number). A manager keeps its leases alive; another takes a job over only
-- when its lease ran out or its manager is known to be gone, under the next fencing number, and
-- every state change names the fencing number it was made under.
create table batch_managers (
    id uuid primary key,
    boot_id text not null,          -- the machine's boot (/proc/sys/kernel/random/boot_id)
    pid integer not null,
    start_ticks bigint not null,    -- with pid, the process across pid reuse
    started_at timestamptz not null default now(),
    seen_at timestamptz not null default now()
);
alter table jobs
    add column lease_owner uuid,
    add column lease_until timestamptz,
    add column fence bigint not null default 0;
create index jobs_leases on jobs (lease_until) where state in ('detected', 'running');

-- The process that last became the stream manager, so the next one knows whether it must wait for
-- it to stop its instances (alive, or on another machine) or may start at once (gone).
create table stream_leader (
    singleton boolean primary key default true check (singleton),
    boot_id text not null,
    pid integer not null,
    start_ticks bigint not null,
    since timestamptz not null default now()
);
