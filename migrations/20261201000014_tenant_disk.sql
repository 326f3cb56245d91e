-- What each tenant's files take on the platform's disk (its disk_quota), kept as a running total
-- instead of summed at every admission: the sum scanned every open job of the tenant (and the index's
-- dead entries) under the tenant's admission lock, and cost the small-file burst a third of its
-- throughput. A job counts its size while its file is on its way (detected, queued, running,
-- retry_wait) and while it is kept in quarantine (rejected or failed with a final path); the trigger
-- adds the difference whenever a row's share changes, in the same transaction, so the total is exact
-- after any crash. Most changes (an attempt starting, a lease renewed) change no share and touch no
-- total.
create table tenant_disk (
    tenant text primary key,
    bytes  bigint not null
);

create function job_disk_share(state text, final_path text, size_bytes bigint) returns bigint
language sql immutable as $$
    select case when state in ('detected', 'queued', 'running', 'retry_wait')
                  or (state in ('rejected', 'failed') and final_path is not null)
                then coalesce(size_bytes, 0) else 0 end
$$;

create function jobs_count_disk() returns trigger language plpgsql as $$
declare
    before_share bigint := 0;
    after_share  bigint := 0;
    who          text;
begin
    if tg_op <> 'INSERT' then
        before_share := job_disk_share(old.state, old.final_path, old.size_bytes);
        who := old.tenant;
    end if;
    if tg_op <> 'DELETE' then
        after_share := job_disk_share(new.state, new.final_path, new.size_bytes);
        who := new.tenant;
    end if;
    if after_share <> before_share then
        insert into tenant_disk (tenant, bytes) values (who, after_share - before_share)
            on conflict (tenant) do update set bytes = tenant_disk.bytes + excluded.bytes;
    end if;
    return null;
end $$;

create trigger jobs_count_disk after insert or update or delete on jobs
    for each row execute function jobs_count_disk();

insert into tenant_disk (tenant, bytes)
    select tenant, sum(job_disk_share(state, final_path, size_bytes)) from jobs group by tenant;

drop index jobs_kept_bytes;
