-- Each stream instance's own key for signing its metrics reports (MYSIMBDP_REPORT_KEY). The monitor
-- trusts a report only when its HMAC matches this key, so an app that learns another instance's id
-- still cannot report for it. 244 random bits from PostgreSQL's strong random source.
alter table stream_instances
    add column report_key text not null
        default replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
