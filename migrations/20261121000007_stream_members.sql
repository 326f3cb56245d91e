-- Each instance's place in its app's consumer group. `member` is a small number, the lowest one no
-- live instance of the app holds when it is created; the app joins its group as the static member
-- `<group>-<member>` (Kafka's group.instance.id). A replacement (a restart, or a new instance after
-- one ended) takes over the same member and its partitions at once, as a StatefulSet's ordinal does.
alter table stream_instances add column member integer;
-- When the platform removed the ended instance's member from the group (or found it gone), so the
-- group gives its partitions to the members that remain. Null while the member may still be there.
alter table stream_instances add column member_released_at timestamptz;

-- Live instances (wanted, or whose program may still run) never share a member.
create unique index stream_instances_live_member on stream_instances (tenant, app, member)
    where desired = 'running' or state not in ('exited', 'failed');
create index stream_instances_unreleased on stream_instances (tenant, app)
    where member is not null and member_released_at is null and state in ('exited', 'failed');
