-- The ingestion log's filters page by keyset (detected_at desc, id desc) within one tenant: each
-- filter gets an index that ends in that order, so every page is an index range scan however many
-- jobs the tenant has.
drop index jobs_by_tenant_state;
create index jobs_by_tenant_state on jobs (tenant, state, detected_at desc, id desc);
create index jobs_by_tenant_file on jobs (tenant, file_name, detected_at desc, id desc);
-- Rate limits read tenant_usage now; nothing looks jobs up by admission time any more.
drop index jobs_admitted;
