-- The ingestion log's main index also carries what the statistics read, so statistics over a
-- tenant's period are an index-only scan (no visit to the wide job rows) and the log's keyset pages
-- use it as before.
drop index jobs_by_tenant_time;
create index jobs_by_tenant_time on jobs (tenant, detected_at desc, id desc)
    include (state, reason, size_bytes, records_ingested, records_rejected, run_ms);
