-- Each tenant's own account on the host: the uid (and gid) its programs run as inside the sandbox.
-- Allocated once and kept, so a tenant's programs always run as the same uid, on every platform
-- process sharing this store.
create table tenant_accounts (
    tenant      text primary key,
    uid         integer not null unique check (uid >= 1000),
    created_at  timestamptz not null default now()
);
