-- The steps between a file's rename and its app's start, each as one statement: one round trip, and
-- the tenant's lock (admission, running jobs) held only while the statement runs and commits.
--
-- Measured before (pg_stat_statements, 2,000 small files over 4 tenants): the admission and the
-- attempt's start each held a per-tenant advisory lock across five or six round trips, and a
-- platform busy with hundreds of files answered each round trip late; the locks were waited on for
-- 18.8 ms on average, with connections held meanwhile, so the pool ran dry and both cores idled 15%
-- of the burst.
--
-- Steps that are not final commit without waiting for the WAL flush (`set_config(..., true)` lasts
-- until the commit): a commit lost to a crash of the machine or of PostgreSQL leaves an earlier,
-- repeatable state, and recovery adopts a claimed file whose row was lost from its work folder.
-- Final outcomes always wait for the flush. Three fsyncs fewer between a rename and the app's start
-- keep that latency flat while PostgreSQL checkpoints.
--
-- PL/pgSQL because each statement in it takes a fresh snapshot: the lock is taken first, and what is
-- counted after it sees every commit made under it.

-- What admission judges a tenant by, written once for the one-statement admission below and for the
-- stepwise one (`store::jobs`).
--
-- The tenant's admitted files in the last hour and bytes in the last day, from its per-minute usage
-- rows: a window takes every minute that began inside it, so it spans up to one minute more than its
-- name and a limit is never exceeded.
create function tenant_rates(p_tenant text, out files bigint, out bytes bigint) language sql stable as $$
    select coalesce(sum(u.files) filter (where u.minute > now() - interval '61 minutes'), 0)::bigint,
           coalesce(sum(u.bytes), 0)::bigint
      from tenant_usage u where u.tenant = p_tenant and u.minute > now() - interval '1441 minutes'
$$;

-- Bytes the tenant's files take on the platform's disk, for its `disk_quota`: files on their way and
-- in quarantine (the running total of the migration `tenant_disk`) plus its installed app versions.
create function tenant_disk_used(p_tenant text) returns bigint language sql stable as $$
    select coalesce((select t.bytes from tenant_disk t where t.tenant = p_tenant), 0)::bigint
         + (select coalesce(sum(a.size_bytes), 0) from apps a where a.tenant = p_tenant)::bigint
$$;

-- The tenant's earlier file with the same content that succeeded or is still on its way, if any.
create function duplicate_of(p_tenant text, p_checksum text, p_id uuid)
returns table (id uuid, file_name text) language sql stable as $$
    select j.id, j.file_name from jobs j
     where j.tenant = p_tenant and j.checksum = p_checksum and j.id <> p_id
       and j.state in ('queued', 'running', 'retry_wait', 'succeeded')
     order by j.detected_at limit 1
$$;

-- Counts one admitted file of `p_size` bytes in the tenant's usage, now, and drops minutes no window
-- reaches any more.
create function count_admission(p_tenant text, p_size bigint) returns void language sql as $$
    delete from tenant_usage where tenant = p_tenant and minute < now() - interval '1 day 1 hour';
    insert into tenant_usage (tenant, minute, files, bytes) values (p_tenant, date_trunc('minute', now()), 1, p_size)
        on conflict (tenant, minute)
        do update set files = tenant_usage.files + 1, bytes = tenant_usage.bytes + excluded.bytes;
$$;

-- A file claimed: its row (`detected`, leased) and its first event.
create function claim_job(p_id uuid, p_tenant text, p_file_name text, p_file_name_bytes bytea,
                          p_staging_path text, p_work_path text, p_owner uuid, p_ttl_ms bigint)
returns setof jobs language plpgsql as $$
declare
    j jobs;
begin
    perform set_config('synchronous_commit', 'off', true);
    insert into jobs (id, tenant, file_name, file_name_bytes, staging_path, work_path, state,
                      lease_owner, lease_until, fence)
        values (p_id, p_tenant, p_file_name, p_file_name_bytes, p_staging_path, p_work_path, 'detected',
                p_owner, now() + make_interval(secs => p_ttl_ms / 1000.0), 1)
        returning * into j;
    insert into job_events (job_id, tenant, state, message) values (j.id, j.tenant, j.state, 'detected ' || p_file_name);
    return next j;
end $$;

-- The admission's common case: a claimed file queued if it is no duplicate and within the tenant's
-- rates and disk quota. False (nothing changed) otherwise, or if the claim is no longer this
-- manager's: the platform then takes the full path, which names the refusal. The conditions are the
-- same as `agreement::limits` (`rates`, `disk`) and `Admission::checks`: this may only ever be
-- stricter than they are, never looser.
create function admit_job(p_tenant text, p_id uuid, p_fence bigint, p_size bigint, p_checksum text,
                          p_format text, p_app text, p_app_version int, p_max_attempts int, p_message text,
                          p_max_files_per_hour bigint, p_max_bytes_per_day bigint, p_disk_quota bigint)
returns boolean language plpgsql as $$
declare
    v_files bigint;
    v_bytes bigint;
    v_used  bigint;
begin
    perform pg_advisory_xact_lock(hashtextextended('admission/' || p_tenant, 0));
    select r.files, r.bytes into v_files, v_bytes from tenant_rates(p_tenant) r;
    if v_files + 1 > p_max_files_per_hour or v_bytes + p_size > p_max_bytes_per_day then
        return false;
    end if;
    if exists (select 1 from duplicate_of(p_tenant, p_checksum, p_id)) then
        return false;
    end if;
    v_used := tenant_disk_used(p_tenant);
    if greatest(v_used, 0) + p_size > p_disk_quota then
        return false;
    end if;
    update jobs set state = 'queued', size_bytes = p_size, checksum = p_checksum, format = p_format,
                    route_app = p_app, app_version = p_app_version, max_attempts = p_max_attempts,
                    admitted_at = now()
     where tenant = p_tenant and id = p_id and state = 'detected' and fence = p_fence;
    if not found then
        return false;
    end if;
    insert into job_events (job_id, tenant, state, message) values (p_id, p_tenant, 'queued', p_message);
    perform count_admission(p_tenant, p_size);
    perform set_config('synchronous_commit', 'off', true);
    return true;
end $$;

-- An attempt started under a new lease, if the job is still queued and the tenant runs fewer than
-- `p_max_running` jobs on all managers together. No row: it stays queued.
create function start_attempt(p_tenant text, p_id uuid, p_app_version int, p_owner uuid, p_ttl_ms bigint,
                              p_max_running bigint)
returns table (attempt int, lease_fence bigint) language plpgsql as $$
declare
    j jobs;
begin
    perform pg_advisory_xact_lock(hashtextextended('running/' || p_tenant, 0));
    if (select count(*) from jobs where tenant = p_tenant and state = 'running') >= p_max_running then
        return;
    end if;
    update jobs set state = 'running', attempts = attempts + 1, started_at = now(),
                    app_version = p_app_version, not_before = null, pid = null, pid_start_ticks = null,
                    lease_owner = p_owner, lease_until = now() + make_interval(secs => p_ttl_ms / 1000.0),
                    fence = fence + 1
     where tenant = p_tenant and id = p_id and state = 'queued'
     returning * into j;
    if not found then
        return;
    end if;
    insert into job_events (job_id, tenant, state, message)
        values (j.id, j.tenant, j.state, 'attempt ' || j.attempts || ' started with app version ' || p_app_version);
    perform set_config('synchronous_commit', 'off', true);
    attempt := j.attempts;
    lease_fence := j.fence;
    return next;
end $$;
