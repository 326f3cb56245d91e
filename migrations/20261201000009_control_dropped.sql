-- Messages on mysimbdp.control the stream manager did not act on: not a notification, not one the
-- monitor stored (forged), not matching what it stored, or failing every time it was tried. Kept so
-- that an operator sees them; the manager reads on past them.
create table control_dropped (
    id           bigserial primary key,
    reason       text not null,
    detail       text not null,
    tenant       text,
    notification uuid,
    partition    integer not null,
    "offset"     bigint not null,
    at           timestamptz not null default now()
);
create index control_dropped_by_reason on control_dropped (reason, at);
