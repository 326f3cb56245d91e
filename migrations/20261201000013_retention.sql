-- Retention deletes old jobs. A tenant's change stamp is the largest `jobs.changed` of its rows, and
-- deleting rows could bring it back to a value an earlier answer was cached under; each deletion
-- therefore records a fresh stamp here, and the tenant's stamp is the larger of the two.
create table job_deletions (
    tenant  text primary key,
    changed bigint not null
);
create index jobs_finished on jobs (finished_at) where state in ('succeeded', 'rejected', 'failed');
create index metrics_reports_received on metrics_reports (received_at);
create index dropped_reports_received on dropped_reports (received_at);

-- The bytes a tenant's files take on the platform's disk (its disk_quota): files on their way and
-- quarantined files, summed from this index alone at each admission.
create index jobs_kept_bytes on jobs (tenant) include (size_bytes)
    where state in ('detected', 'queued', 'running', 'retry_wait')
       or (state in ('rejected', 'failed') and final_path is not null);
