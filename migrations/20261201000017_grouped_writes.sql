-- Files claimed, and a tenant's claimed files admitted, in groups: one statement, one commit (and
-- for admissions one lock) for as many files as are ready. The platform gathers them while the
-- group's previous statement runs (`batch::grouped`).
--
-- Measured before (2,000 small files renamed into 4 tenants' staging folders, `pg_stat_activity`
-- sampled every 250 ms): every claim queued for a pooled connection before any admission could, and
-- each file's `admit_job` then waited for its tenant's admission lock, 11 ms on average, with 20 to
-- 27 of the 32 pooled connections; no app could start until the whole burst had been claimed, then
-- admitted, and the store worked out the tenant's rates, disk use and usage row once per file.
--
-- Admission judges the files in order, each against the limits as the earlier ones in the group left
-- them, so a group admits exactly what the same files admitted one by one would. A file not admitted
-- is judged again on its own by the stepwise path, which names its refusal.

-- A tenant's files claimed: their rows (`detected`, leased to `p_owner`) and their first events.
-- Commits without waiting for the flush (see `one_round_trip`). Grouped by tenant, so that no
-- tenant's file can fail another tenant's claims.
create function claim_jobs(p_tenant text, p_ids uuid[], p_file_names text[], p_file_name_bytes bytea[],
                           p_staging_paths text[], p_work_paths text[], p_owner uuid, p_ttl_ms bigint)
returns setof jobs language plpgsql as $$
begin
    perform set_config('synchronous_commit', 'off', true);
    return query
        with j as (insert into jobs (id, tenant, file_name, file_name_bytes, staging_path, work_path, state,
                                     lease_owner, lease_until, fence)
                   select c.id, p_tenant, c.file_name, c.file_name_bytes, c.staging_path, c.work_path, 'detected',
                          p_owner, now() + make_interval(secs => p_ttl_ms / 1000.0), 1
                     from unnest(p_ids, p_file_names, p_file_name_bytes, p_staging_paths, p_work_paths)
                          as c(id, file_name, file_name_bytes, staging_path, work_path)
                   returning *),
             e as (insert into job_events (job_id, tenant, state, message)
                   select j.id, j.tenant, j.state, 'detected ' || j.file_name from j)
        select * from j;
end $$;

drop function claim_job(uuid, text, text, bytea, text, text, uuid, bigint);

-- A tenant's files admitted in order (see above). Returns the ids of those queued.
create function admit_jobs(p_tenant text, p_ids uuid[], p_fences bigint[], p_sizes bigint[], p_checksums text[],
                           p_formats text[], p_apps text[], p_app_versions int[], p_max_attempts int[],
                           p_messages text[], p_max_files_per_hour bigint[], p_max_bytes_per_day bigint[],
                           p_disk_quotas bigint[])
returns setof uuid language plpgsql as $$
declare
    v_files bigint;
    v_bytes bigint;
    v_used  bigint;
    n_files bigint := 0;
    n_bytes bigint := 0;
begin
    perform pg_advisory_xact_lock(hashtextextended('admission/' || p_tenant, 0));
    select r.files, r.bytes into v_files, v_bytes from tenant_rates(p_tenant) r;
    v_used := greatest(tenant_disk_used(p_tenant), 0);
    for i in 1 .. coalesce(array_length(p_ids, 1), 0) loop
        continue when v_files + n_files + 1 > p_max_files_per_hour[i]
                   or v_bytes + n_bytes + p_sizes[i] > p_max_bytes_per_day[i];
        -- An earlier file of this batch is seen: its row was changed by this same transaction.
        continue when exists (select 1 from duplicate_of(p_tenant, p_checksums[i], p_ids[i]));
        continue when v_used + p_sizes[i] > p_disk_quotas[i];
        update jobs set state = 'queued', size_bytes = p_sizes[i], checksum = p_checksums[i], format = p_formats[i],
                        route_app = p_apps[i], app_version = p_app_versions[i], max_attempts = p_max_attempts[i],
                        admitted_at = now()
         where tenant = p_tenant and id = p_ids[i] and state = 'detected' and fence = p_fences[i];
        continue when not found;
        insert into job_events (job_id, tenant, state, message) values (p_ids[i], p_tenant, 'queued', p_messages[i]);
        n_files := n_files + 1;
        n_bytes := n_bytes + p_sizes[i];
        -- What the disk trigger just added for this file (`job_disk_share` of a queued job).
        v_used := v_used + p_sizes[i];
        return next p_ids[i];
    end loop;
    if n_files > 0 then
        perform count_admissions(p_tenant, n_files, n_bytes);
        perform set_config('synchronous_commit', 'off', true);
    end if;
end $$;

-- Counts `p_files` admitted files of `p_bytes` bytes in all in the tenant's usage, now, and drops
-- minutes no window reaches any more.
create function count_admissions(p_tenant text, p_files bigint, p_bytes bigint) returns void language sql as $$
    delete from tenant_usage where tenant = p_tenant and minute < now() - interval '1 day 1 hour';
    insert into tenant_usage (tenant, minute, files, bytes)
        values (p_tenant, date_trunc('minute', now()), p_files, p_bytes)
        on conflict (tenant, minute)
        do update set files = tenant_usage.files + excluded.files, bytes = tenant_usage.bytes + excluded.bytes;
$$;

drop function admit_job(text, uuid, bigint, bigint, text, text, text, int, int, text, bigint, bigint, bigint);

-- One file admitted again (a retry counts against the rates, `store::jobs`).
create or replace function count_admission(p_tenant text, p_size bigint) returns void language sql as $$
    select count_admissions(p_tenant, 1, p_size)
$$;
