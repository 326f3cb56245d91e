//! What a tenant's connection may ask of the broker, request by request: its own topics
//! (`<tenant>.*`) to read, write, list and describe; its own consumer groups (`<tenant>.*`) to join,
//! commit and describe; `mysimbdp.metrics` to write its (signed) reports to. Nothing else: no other
//! topic or group is seen, read, written or committed, no topic is created or deleted, no
//! configuration read or changed.
//!
//! The gateway advertises only the APIs below, at versions that name topics (not topic ids), so every
//! request it passes can be checked by name. A refused request is answered by the gateway with the
//! broker's own authorization errors (29 for a topic, 30 for a group); a request of an API it does not
//! know, or that it cannot decode, closes the connection. Answers that name brokers (Metadata,
//! FindCoordinator) are rewritten to name the gateway, and lists of topics and groups are filtered to the
//! tenant's own.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::messaging::topics::METRICS_TOPIC;
use crate::tenant::TenantId;

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

/// The APIs a tenant's client may use and the highest version of each the gateway lets it speak:
/// every one of them names topics and groups by name at these versions.
const ALLOWED: [(ApiKey, i16, i16); 15] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
];

/// One tenant's rights.
#[derive(Clone, Debug)]
pub struct Scope {
    pub tenant: TenantId,
    prefix: String,
}

impl Scope {
    pub fn new(tenant: TenantId) -> Self {
        let prefix = format!("{tenant}.");
        Scope { tenant, prefix }
    }

    fn owns(&self, name: &str) -> bool {
        name.starts_with(&self.prefix)
    }

    /// Its own topics, and the one it writes its reports to (which it may see, to write to).
    fn may_write(&self, topic: &str) -> bool {
        self.owns(topic) || topic == METRICS_TOPIC
    }
}

/// How the broker's answer to a passed request reaches the client.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// No answer comes (a produce with `acks = 0`).
    None,
    /// As the broker sent it.
    Raw,
    /// Only the allowed APIs, at the allowed versions.
    ApiVersions,
    /// Brokers renamed to the gateway, only the tenant's topics (those `asked`, if it named some), and
    /// the refused ones as refused.
    Metadata { asked: Option<Vec<String>>, refused: Vec<String> },
    /// The coordinator renamed to the gateway.
    FindCoordinator,
    /// Only the tenant's groups.
    ListGroups,
}

#[derive(Debug)]
pub enum Decision {
    /// Send this frame (the request, possibly narrowed) to the broker.
    Pass { frame: Bytes, reply: Reply, api: ApiKey, version: i16 },
    /// Answer the client with this frame; the broker is not asked.
    Answer(Bytes),
    /// Refused, and the client expects no answer.
    Drop,
    /// End the connection, for this reason.
    Close(String),
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, String> {
    T::decode(body, version).map_err(|e| format!("the request does not decode: {e}"))
}

/// A frame (without its length prefix) holding `header` and `body`.
fn frame(header: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>, body: &impl Encodable, version: i16) -> Bytes {
    let mut out = BytesMut::new();
    header(&mut out).expect("a header encodes");
    body.encode(&mut out, version).expect("a message built here encodes at the version it was read at");
    out.freeze()
}

/// The gateway's own answer to a request.
fn answer(api: ApiKey, version: i16, correlation: i32, body: &impl Encodable) -> Decision {
    let header = ResponseHeader::default().with_correlation_id(correlation);
    Decision::Answer(frame(|out| header.encode(out, api.response_header_version(version)), body, version))
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from(name.to_owned()))
}

/// Decides what to do with one request frame from a tenant's client.
pub fn decide(scope: &Scope, request: Bytes) -> Decision {
    match decide_inner(scope, request) {
        Ok(d) => d,
        Err(why) => Decision::Close(why),
    }
}

/// Long on purpose: one arm per Kafka API the gateway lets through, each checking that request's
/// topics and groups side by side, so the whole policy reads (and is reviewed) in one place.
fn decide_inner(scope: &Scope, request: Bytes) -> Result<Decision, String> {
    if request.len() < 4 {
        return Err("a request shorter than its api key and version".into());
    }
    let key = i16::from_be_bytes([request[0], request[1]]);
    let version = i16::from_be_bytes([request[2], request[3]]);
    let api = ApiKey::try_from(key).map_err(|_| format!("unknown api key {key}"))?;
    let Some(&(_, min, max)) = ALLOWED.iter().find(|(a, _, _)| *a == api) else {
        return Err(format!("{api:?} is not allowed through the gateway"));
    };
    // ApiVersions is asked before the client knows what is supported; any version is answered.
    if api != ApiKey::ApiVersions && !(min..=max).contains(&version) {
        return Err(format!("{api:?} v{version} is outside v{min}..=v{max}"));
    }
    let mut body = request.clone();
    let header = RequestHeader::decode(&mut body, api.request_header_version(version))
        .map_err(|e| format!("the request header does not decode: {e}"))?;
    let c = header.correlation_id;
    let pass = |reply: Reply| Ok(Decision::Pass { frame: request.clone(), reply, api, version });
    match api {
        ApiKey::ApiVersions => pass(Reply::ApiVersions),
        ApiKey::Metadata => {
            let mut r: MetadataRequest = decode(&mut body, version)?;
            let Some(topics) = r.topics.take() else {
                return pass(Reply::Metadata { asked: None, refused: Vec::new() });
            };
            let (mine, refused): (Vec<_>, Vec<_>) =
                topics.into_iter().partition(|t| t.name.as_ref().is_some_and(|n| scope.may_write(n)));
            let refused = refused.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect();
            // Some brokers answer an empty list with every topic: keep to what was asked either way.
            let asked = Some(mine.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect());
            r.topics = Some(mine);
            r.allow_auto_topic_creation = false;
            let narrowed = frame(|out| header.encode(out, api.request_header_version(version)), &r, version);
            Ok(Decision::Pass { frame: narrowed, reply: Reply::Metadata { asked, refused }, api, version })
        }
        ApiKey::Produce => {
            let r: ProduceRequest = decode(&mut body, version)?;
            let transactional = r.transactional_id.as_ref().is_none_or(|t| scope.owns(t));
            if transactional && r.topic_data.iter().all(|t| scope.may_write(&t.name)) {
                return pass(if r.acks == 0 { Reply::None } else { Reply::Raw });
            }
            if r.acks == 0 {
                return Ok(Decision::Drop);
            }
            let responses = r
                .topic_data
                .iter()
                .map(|t| {
                    let partitions = t
                        .partition_data
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_base_offset(-1)
                        })
                        .collect();
                    TopicProduceResponse::default().with_name(t.name.clone()).with_partition_responses(partitions)
                })
                .collect();
            Ok(answer(api, version, c, &ProduceResponse::default().with_responses(responses)))
        }
        ApiKey::Fetch => {
            let r: FetchRequest = decode(&mut body, version)?;
            let named = r.topics.iter().map(|t| &t.topic).chain(r.forgotten_topics_data.iter().map(|t| &t.topic));
            if named.clone().all(|t| scope.owns(t)) {
                return pass(Reply::Raw);
            }
            let responses = r
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            fetch_response::PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                        })
                        .collect();
                    FetchableTopicResponse::default().with_topic(t.topic.clone()).with_partitions(partitions)
                })
                .collect();
            Ok(answer(api, version, c, &FetchResponse::default().with_responses(responses)))
        }
        ApiKey::ListOffsets => {
            let r: ListOffsetsRequest = decode(&mut body, version)?;
            if r.topics.iter().all(|t| scope.owns(&t.name)) {
                return pass(Reply::Raw);
            }
            let topics = r
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_offset(-1)
                                .with_timestamp(-1)
                        })
                        .collect();
                    ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(partitions)
                })
                .collect();
            Ok(answer(api, version, c, &ListOffsetsResponse::default().with_topics(topics)))
        }
        ApiKey::OffsetCommit => {
            let r: OffsetCommitRequest = decode(&mut body, version)?;
            let group_ok = scope.owns(&r.group_id);
            if group_ok && r.topics.iter().all(|t| scope.owns(&t.name)) {
                return pass(Reply::Raw);
            }
            let topics = r
                .topics
                .iter()
                .map(|t| {
                    let code = if group_ok { TOPIC_AUTHORIZATION_FAILED } else { GROUP_AUTHORIZATION_FAILED };
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
                })
                .collect();
            Ok(answer(api, version, c, &OffsetCommitResponse::default().with_topics(topics)))
        }
        ApiKey::OffsetFetch => {
            let r: OffsetFetchRequest = decode(&mut body, version)?;
            let topics_ok = r.topics.iter().flatten().all(|t| scope.owns(&t.name));
            if scope.owns(&r.group_id) && topics_ok {
                return pass(Reply::Raw);
            }
            let mut refused = OffsetFetchResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED);
            if version < 2 {
                // v0 and v1 have no top-level error: each partition says it.
                refused.topics = r
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        let partitions = t
                            .partition_indexes
                            .iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(-1)
                                    .with_error_code(GROUP_AUTHORIZATION_FAILED)
                            })
                            .collect();
                        OffsetFetchResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
                    })
                    .collect();
            }
            Ok(answer(api, version, c, &refused))
        }
        ApiKey::FindCoordinator => {
            let r: FindCoordinatorRequest = decode(&mut body, version)?;
            if scope.owns(&r.key) {
                return pass(Reply::FindCoordinator);
            }
            let code = if r.key_type == 1 { TRANSACTIONAL_ID_AUTHORIZATION_FAILED } else { GROUP_AUTHORIZATION_FAILED };
            let refused =
                FindCoordinatorResponse::default().with_error_code(code).with_node_id(BrokerId(-1)).with_port(-1);
            Ok(answer(api, version, c, &refused))
        }
        ApiKey::JoinGroup => {
            let r: JoinGroupRequest = decode(&mut body, version)?;
            if scope.owns(&r.group_id) {
                return pass(Reply::Raw);
            }
            let refused = JoinGroupResponse::default()
                .with_error_code(GROUP_AUTHORIZATION_FAILED)
                .with_generation_id(-1)
                .with_protocol_name(Some(StrBytes::default()));
            Ok(answer(api, version, c, &refused))
        }
        ApiKey::SyncGroup => {
            let r: SyncGroupRequest = decode(&mut body, version)?;
            if scope.owns(&r.group_id) {
                return pass(Reply::Raw);
            }
            Ok(answer(api, version, c, &SyncGroupResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED)))
        }
        ApiKey::Heartbeat => {
            let r: HeartbeatRequest = decode(&mut body, version)?;
            if scope.owns(&r.group_id) {
                return pass(Reply::Raw);
            }
            Ok(answer(api, version, c, &HeartbeatResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED)))
        }
        ApiKey::LeaveGroup => {
            let r: LeaveGroupRequest = decode(&mut body, version)?;
            if scope.owns(&r.group_id) {
                return pass(Reply::Raw);
            }
            Ok(answer(api, version, c, &LeaveGroupResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED)))
        }
        ApiKey::DescribeGroups => {
            let r: DescribeGroupsRequest = decode(&mut body, version)?;
            if r.groups.iter().all(|g| scope.owns(g)) {
                return pass(Reply::Raw);
            }
            let groups = r
                .groups
                .iter()
                .map(|g| DescribedGroup::default().with_group_id(g.clone()).with_error_code(GROUP_AUTHORIZATION_FAILED))
                .collect();
            Ok(answer(api, version, c, &DescribeGroupsResponse::default().with_groups(groups)))
        }
        ApiKey::ListGroups => pass(Reply::ListGroups),
        ApiKey::InitProducerId => {
            let r: InitProducerIdRequest = decode(&mut body, version)?;
            if r.transactional_id.as_ref().is_none_or(|t| scope.owns(t)) {
                return pass(Reply::Raw);
            }
            let refused = InitProducerIdResponse::default()
                .with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            Ok(answer(api, version, c, &refused))
        }
        other => Err(format!("{other:?} is not allowed through the gateway")),
    }
}

/// The broker's answer as the client may see it. `frame` is the answer without its length prefix;
/// `gateway` is the host and port the client reaches the broker at.
pub fn rewrite(
    scope: &Scope,
    reply: &Reply,
    api: ApiKey,
    version: i16,
    frame_in: Bytes,
    gateway: (&str, i32),
) -> anyhow::Result<Option<Bytes>> {
    if matches!(reply, Reply::None) {
        return Ok(None);
    }
    if matches!(reply, Reply::Raw) {
        return Ok(Some(frame_in));
    }
    let header_version = api.response_header_version(version);
    let mut body = frame_in;
    let header = ResponseHeader::decode(&mut body, header_version)?;
    let host = StrBytes::from(gateway.0.to_owned());
    let out = match reply {
        Reply::ApiVersions => {
            let mut r = ApiVersionsResponse::decode(&mut body, version)?;
            r.api_keys.retain_mut(|k| {
                let Some(&(_, min, max)) = ALLOWED.iter().find(|(a, _, _)| *a as i16 == k.api_key) else {
                    return false;
                };
                k.min_version = k.min_version.max(min);
                k.max_version = k.max_version.min(max);
                k.min_version <= k.max_version
            });
            frame(|o| header.encode(o, header_version), &r, version)
        }
        Reply::Metadata { asked, refused } => {
            let mut r = MetadataResponse::decode(&mut body, version)?;
            for b in &mut r.brokers {
                b.host = host.clone();
                b.port = gateway.1;
            }
            r.topics.retain(|t| {
                t.name.as_ref().is_some_and(|n| match asked {
                    Some(asked) => asked.iter().any(|a| a == n.as_str()),
                    None => scope.may_write(n),
                })
            });
            r.topics.extend(refused.iter().map(|n| {
                MetadataResponseTopic::default().with_name(Some(topic(n))).with_error_code(TOPIC_AUTHORIZATION_FAILED)
            }));
            frame(|o| header.encode(o, header_version), &r, version)
        }
        Reply::FindCoordinator => {
            let mut r = FindCoordinatorResponse::decode(&mut body, version)?;
            if r.error_code == 0 {
                r.host = host.clone();
                r.port = gateway.1;
            }
            for c in r.coordinators.iter_mut().filter(|c| c.error_code == 0) {
                c.host = host.clone();
                c.port = gateway.1;
            }
            frame(|o| header.encode(o, header_version), &r, version)
        }
        Reply::ListGroups => {
            let mut r = ListGroupsResponse::decode(&mut body, version)?;
            r.groups.retain(|g| scope.owns(&g.group_id));
            frame(|o| header.encode(o, header_version), &r, version)
        }
        Reply::None | Reply::Raw => unreachable!("handled above"),
    };
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_request::FetchTopic;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};

    use super::*;

    fn scope() -> Scope {
        Scope::new(TenantId::parse("zoo").unwrap())
    }

    fn request(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        frame(|o| header.encode(o, api.request_header_version(version)), body, version)
    }

    fn refused<R: Decodable>(d: Decision, api: ApiKey, version: i16) -> R {
        let Decision::Answer(mut f) = d else { panic!("not answered by the gateway: {d:?}") };
        let h = ResponseHeader::decode(&mut f, api.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, 7);
        R::decode(&mut f, version).unwrap()
    }

    fn produce(topic_name: &str, acks: i16) -> ProduceRequest {
        let data = TopicProduceData::default()
            .with_name(topic(topic_name))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0)]);
        ProduceRequest::default().with_acks(acks).with_topic_data(vec![data])
    }

    #[test]
    fn a_tenant_writes_its_own_topics_and_the_metrics_topic_only() {
        for t in ["zoo.readings", "mysimbdp.metrics"] {
            assert!(matches!(decide(&scope(), request(ApiKey::Produce, 9, &produce(t, -1))), Decision::Pass { .. }));
        }
        for t in ["zoo2.readings", "other.readings", "mysimbdp.control", "zoo"] {
            let r: ProduceResponse =
                refused(decide(&scope(), request(ApiKey::Produce, 9, &produce(t, -1))), ApiKey::Produce, 9);
            assert_eq!(r.responses[0].partition_responses[0].error_code, TOPIC_AUTHORIZATION_FAILED, "{t}");
            assert!(matches!(decide(&scope(), request(ApiKey::Produce, 9, &produce(t, 0))), Decision::Drop));
        }
    }

    #[test]
    fn a_tenant_reads_and_commits_only_its_own() {
        let fetch = |t: &str| {
            let topic = FetchTopic::default()
                .with_topic(topic(t))
                .with_partitions(vec![fetch_request::FetchPartition::default().with_partition(0)]);
            FetchRequest::default().with_topics(vec![topic])
        };
        assert!(matches!(decide(&scope(), request(ApiKey::Fetch, 12, &fetch("zoo.readings"))), Decision::Pass { .. }));
        let r: FetchResponse =
            refused(decide(&scope(), request(ApiKey::Fetch, 12, &fetch("b.readings"))), ApiKey::Fetch, 12);
        assert_eq!(r.responses[0].partitions[0].error_code, TOPIC_AUTHORIZATION_FAILED);

        let commit = |g: &str, t: &str| {
            let topic = OffsetCommitRequestTopic::default()
                .with_name(topic(t))
                .with_partitions(vec![OffsetCommitRequestPartition::default().with_partition_index(3)]);
            OffsetCommitRequest::default().with_group_id(GroupId(StrBytes::from(g.to_owned()))).with_topics(vec![topic])
        };
        let ok = commit("zoo.app", "zoo.readings");
        assert!(matches!(decide(&scope(), request(ApiKey::OffsetCommit, 8, &ok)), Decision::Pass { .. }));
        for (g, t, code) in [
            ("b.app", "b.readings", GROUP_AUTHORIZATION_FAILED),
            ("b.app", "zoo.readings", GROUP_AUTHORIZATION_FAILED),
            ("zoo.app", "b.readings", TOPIC_AUTHORIZATION_FAILED),
        ] {
            let d = decide(&scope(), request(ApiKey::OffsetCommit, 8, &commit(g, t)));
            let r: OffsetCommitResponse = refused(d, ApiKey::OffsetCommit, 8);
            assert_eq!(r.topics[0].partitions[0].error_code, code, "{g} {t}");
        }
        let join = JoinGroupRequest::default().with_group_id(GroupId(StrBytes::from_static_str("b.app")));
        let r: JoinGroupResponse =
            refused(decide(&scope(), request(ApiKey::JoinGroup, 7, &join)), ApiKey::JoinGroup, 7);
        assert_eq!(r.error_code, GROUP_AUTHORIZATION_FAILED);
        let find = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("b.app"));
        let r: FindCoordinatorResponse =
            refused(decide(&scope(), request(ApiKey::FindCoordinator, 3, &find)), ApiKey::FindCoordinator, 3);
        assert_eq!(r.error_code, GROUP_AUTHORIZATION_FAILED);
    }

    #[test]
    fn apis_and_versions_outside_the_list_close_the_connection() {
        let create = CreateTopicsRequest::default();
        assert!(matches!(decide(&scope(), request(ApiKey::CreateTopics, 5, &create)), Decision::Close(_)));
        // Fetch v13 names topics by id, which the gateway does not check.
        let fetch = FetchRequest::default();
        assert!(matches!(decide(&scope(), request(ApiKey::Fetch, 13, &fetch)), Decision::Close(_)));
        assert!(matches!(decide(&scope(), Bytes::from_static(b"\x00")), Decision::Close(_)));
        assert!(matches!(decide(&scope(), Bytes::from_static(b"\x7f\x00\x00\x00garbage")), Decision::Close(_)));
    }

    #[test]
    fn metadata_shows_only_the_tenants_topics_and_names_the_gateway() {
        let asked = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(topic("zoo.readings"))),
            metadata_request::MetadataRequestTopic::default().with_name(Some(topic("b.readings"))),
        ]));
        let Decision::Pass { frame: mut sent, reply, .. } = decide(&scope(), request(ApiKey::Metadata, 12, &asked))
        else {
            panic!()
        };
        RequestHeader::decode(&mut sent, ApiKey::Metadata.request_header_version(12)).unwrap();
        let narrowed = MetadataRequest::decode(&mut sent, 12).unwrap();
        let names: Vec<String> = narrowed.topics.unwrap().into_iter().map(|t| t.name.unwrap().0.to_string()).collect();
        assert_eq!(names, ["zoo.readings"], "the broker is not even asked about another tenant's topic");
        // The broker's answer listing everything it has.
        let listed = |n: &str| MetadataResponseTopic::default().with_name(Some(topic(n)));
        let answer = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_host(StrBytes::from_static_str("10.0.0.9"))
                .with_port(9092)])
            .with_topics(vec![
                listed("zoo.readings"),
                listed("b.readings"),
                listed("mysimbdp.control"),
                listed("mysimbdp.metrics"),
            ]);
        let header = ResponseHeader::default().with_correlation_id(7);
        let raw = frame(|o| header.encode(o, ApiKey::Metadata.response_header_version(12)), &answer, 12);
        let mut out = rewrite(&scope(), &reply, ApiKey::Metadata, 12, raw, ("127.0.0.1", 4000)).unwrap().unwrap();
        ResponseHeader::decode(&mut out, ApiKey::Metadata.response_header_version(12)).unwrap();
        let seen = MetadataResponse::decode(&mut out, 12).unwrap();
        assert_eq!((seen.brokers[0].host.as_str(), seen.brokers[0].port), ("127.0.0.1", 4000));
        let topics: Vec<(String, i16)> =
            seen.topics.iter().map(|t| (t.name.clone().unwrap().0.to_string(), t.error_code)).collect();
        assert_eq!(topics, [("zoo.readings".into(), 0), ("b.readings".into(), TOPIC_AUTHORIZATION_FAILED)]);
        // Asking for everything shows its own and the metrics topic.
        let all = Reply::Metadata { asked: None, refused: Vec::new() };
        let raw = frame(|o| header.encode(o, ApiKey::Metadata.response_header_version(12)), &answer, 12);
        let mut out = rewrite(&scope(), &all, ApiKey::Metadata, 12, raw, ("127.0.0.1", 4000)).unwrap().unwrap();
        ResponseHeader::decode(&mut out, ApiKey::Metadata.response_header_version(12)).unwrap();
        let names: Vec<String> = MetadataResponse::decode(&mut out, 12)
            .unwrap()
            .topics
            .iter()
            .map(|t| t.name.clone().unwrap().0.to_string())
            .collect();
        assert_eq!(names, ["zoo.readings", "mysimbdp.metrics"]);
    }
}
