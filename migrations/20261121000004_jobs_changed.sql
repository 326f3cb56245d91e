-- Every write to a job stamps it with a number from one sequence, so "has anything of this tenant's
-- jobs changed?" is one index probe: max(changed) for the tenant. The API's page cache keys on it.
-- The sequence only grows, so the maximum can only fall back to an earlier value when every row
-- written since then was deleted again, i.e. when the tenant's rows are exactly what they were.
create sequence jobs_change_seq;
alter table jobs add column changed bigint;
update jobs set changed = nextval('jobs_change_seq');
alter table jobs alter column changed set default nextval('jobs_change_seq');
alter table jobs alter column changed set not null;

create function jobs_stamp_change() returns trigger language plpgsql as $$
begin
    new.changed := nextval('jobs_change_seq');
    return new;
end $$;
create trigger jobs_stamp_change before update on jobs for each row execute function jobs_stamp_change();

create index jobs_by_tenant_changed on jobs (tenant, changed desc);
