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
