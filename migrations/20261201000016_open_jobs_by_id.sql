-- Open jobs indexed by state and id, so that changing one job (`... where id = $2 and state =
-- 'queued'`) is one probe however many jobs are open.
--
-- The partial indexes on open jobs had no id: `jobs_open (state)` and `jobs_leases (lease_until)`.
-- Statistics gathered while few jobs were open made either one look cheaper than the primary key
-- for such a change (it implies their predicate), and the plan, kept for the session, scanned every
-- open job for each change: with 2,000 files in flight, 540 to 640 buffers per admission and per
-- attempt start, and the store took half of both cores. Keyed on (state, id), the open index answers
-- the change with one probe, the sweep for queued jobs and the count of a tenant's running jobs by
-- state, and the lease checks (detected and running jobs) as well; `jobs_leases` is no longer needed.
drop index jobs_open;
drop index jobs_leases;
create index jobs_open on jobs (state, id) where state in ('detected', 'queued', 'running', 'retry_wait');
