-- Tenants' secrets (a source database's URL, an API key), sealed with the platform's key
-- (XChaCha20-Poly1305, the tenant and name bound in as associated data): the store never holds a
-- value in the clear, and the API never returns one.
create table tenant_secrets (
    tenant     text not null,
    name       text not null,
    nonce      bytea not null,
    ciphertext bytea not null,
    -- The value's length, for listings (the value itself is never shown).
    size_bytes integer not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (tenant, name)
);
