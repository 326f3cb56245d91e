-- What each tenant had admitted, per minute: the files/hour and bytes/day limits are checked
-- against at most 1,440 small rows instead of every job of the last day (which grew with the rate
-- being limited, so a busy tenant's every admission got slower).
create table tenant_usage (
    tenant text not null,
    minute timestamptz not null,
    files integer not null,
    bytes bigint not null,
    primary key (tenant, minute)
);

insert into tenant_usage (tenant, minute, files, bytes)
select tenant, date_trunc('minute', admitted_at), count(*), coalesce(sum(size_bytes), 0)
from jobs
where admitted_at > now() - interval '1 day'
group by 1, 2;
