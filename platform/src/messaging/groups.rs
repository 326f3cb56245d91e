//! The static members of the stream apps' consumer groups.
//!
//! Each stream instance joins its app's group as a static member (`group.instance.id`, KIP-345): a
//! replacement for a crashed run takes over the member's partitions at once instead of waiting for a
//! rebalance. The price is that a static member never leaves the group by itself; Kafka only drops it
//! when its session times out, and tansu 0.6 never does while the other members are static too. So
//! when an instance ends for good the platform removes its member, as `kafka-consumer-groups
//! --delete-members` does (LeaveGroup v3 naming the member), and the group hands its partitions to the
//! members that remain.

use std::time::Duration;

use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, LeaveGroupRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::wire::Connection;

const CLIENT_ID: &str = "mysimbdp-groups";
const TIMEOUT: Duration = Duration::from_secs(5);
/// The member is not (or no longer) in the group: nothing to remove.
const UNKNOWN_MEMBER_ID: i16 = 25;
/// Another member holds the instance id now (a replacement): not ours to remove.
const FENCED_INSTANCE_ID: i16 = 82;

/// A member of a consumer group as the coordinator describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The coordinator's name for the member.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    /// The partitions the group gave the member (empty while it has none, or if the broker does not
    /// say).
    pub assignment: Vec<(String, i32)>,
}

impl Member {
    /// The member's `group.instance.id`, if it is a static member. Brokers that do not say (tansu
    /// 0.6 answers DescribeGroups without it) are read from the member id, which Kafka and tansu both
    /// make `<group.instance.id>-<uuid>` for a static member. (A dynamic member's id is
    /// `<client.id>-<uuid>` and reads the same way, so only ask about ids the platform gave out.)
    pub fn instance_id(&self) -> Option<String> {
        if let Some(id) = &self.group_instance_id {
            return Some(id.clone());
        }
        let (prefix, uuid) = self.member_id.split_at_checked(self.member_id.len().checked_sub(37)?)?;
        let uuid = uuid.strip_prefix('-')?;
        uuid::Uuid::try_parse(uuid).ok().map(|_| prefix.to_owned())
    }
}

fn failed(what: &str, code: i16, message: Option<&StrBytes>) -> std::io::Error {
    let message = message.map(|m| format!(": {}", m.as_str())).unwrap_or_default();
    std::io::Error::other(format!("{what} answered error code {code}{message}"))
}

/// Connects to the broker that coordinates `group`, asking the first of `brokers` that answers.
pub(crate) async fn coordinator(brokers: &str, group: &str) -> std::io::Result<Connection> {
    let mut why = Vec::new();
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let found = async {
            let mut conn = Connection::connect(broker, CLIENT_ID, TIMEOUT).await?;
            let request = FindCoordinatorRequest::default().with_key(StrBytes::from(group.to_owned())).with_key_type(0);
            let answer = conn.call(&request, 1).await?;
            if answer.error_code != 0 {
                return Err(failed("FindCoordinator", answer.error_code, answer.error_message.as_ref()));
            }
            let address = format!("{}:{}", answer.host.as_str(), answer.port);
            if address == broker {
                return Ok(conn);
            }
            Connection::connect(&address, CLIENT_ID, TIMEOUT).await
        };
        match found.await {
            Ok(conn) => return Ok(conn),
            Err(e) => why.push(format!("{broker}: {e}")),
        }
    }
    Err(std::io::Error::other(if why.is_empty() { "no broker address configured".into() } else { why.join("; ") }))
}

/// The group's state (`Stable`, `Empty`, ...) and members.
async fn describe(conn: &mut Connection, group: &str) -> std::io::Result<(String, Vec<Member>)> {
    let request = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from(group.to_owned()))]);
    // v4 is the first to name each member's group.instance.id.
    let answer = conn.call(&request, 4).await?;
    let (mut state, mut members) = (String::new(), Vec::new());
    for g in answer.groups {
        if g.error_code != 0 {
            return Err(failed("DescribeGroups", g.error_code, g.error_message.as_ref()));
        }
        state = g.group_state.as_str().to_owned();
        members.extend(g.members.into_iter().map(|m| Member {
            member_id: m.member_id.as_str().to_owned(),
            group_instance_id: m.group_instance_id.map(|i| i.as_str().to_owned()),
            client_id: m.client_id.as_str().to_owned(),
            assignment: assignment(m.member_assignment),
        }));
    }
    Ok((state, members))
}

/// The partitions in a consumer-protocol assignment (version, then topics and their partitions);
/// nothing if it is not one.
fn assignment(mut bytes: bytes::Bytes) -> Vec<(String, i32)> {
    use kafka_protocol::protocol::Decodable;
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = bytes::Buf::get_i16(&mut bytes);
    let Ok(decoded) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3)) else { return Vec::new() };
    let mut out = Vec::new();
    for t in decoded.assigned_partitions {
        out.extend(t.partitions.into_iter().map(|p| (t.topic.as_str().to_owned(), p)));
    }
    out
}

/// The group's members now.
pub async fn members(brokers: &str, group: &str) -> std::io::Result<Vec<Member>> {
    Ok(describe(&mut coordinator(brokers, group).await?, group).await?.1)
}

/// The group's members, over a connection to its coordinator.
pub(crate) async fn members_on(conn: &mut Connection, group: &str) -> std::io::Result<Vec<Member>> {
    Ok(describe(conn, group).await?.1)
}

/// Group states in which removing a member cannot strand the group: settled, or rebalancing with no
/// leader chosen yet (tansu's `Assigning`).
const SAFE_STATES: [&str; 4] = ["Stable", "Empty", "Dead", "Assigning"];

/// Removes the static members of `group` whose `group.instance.id` is one of `instance_ids`; returns
/// the instance ids it removed (those not in the group are not an error: nothing was left to remove).
///
/// Returns None, removing nothing, while the group is rebalancing with a leader chosen, unless
/// `even_while_rebalancing`: tansu 0.6 keeps waiting for a leader removed at that moment (it drops the
/// member but not the group's leader). A member whose session has expired is safe to remove at any
/// time, since tansu then drops it, and its leadership, itself when the removal arrives.
pub async fn remove_static(
    brokers: &str,
    group: &str,
    instance_ids: &[String],
    even_while_rebalancing: bool,
) -> std::io::Result<Option<Vec<String>>> {
    let mut conn = coordinator(brokers, group).await?;
    let (state, members) = describe(&mut conn, group).await?;
    let leaving: Vec<MemberIdentity> = members
        .into_iter()
        .filter_map(|m| {
            let id = m.instance_id().filter(|i| instance_ids.contains(i))?;
            // Both names: Kafka finds a static member by its instance id, tansu by its member id.
            Some(
                MemberIdentity::default()
                    .with_member_id(StrBytes::from(m.member_id))
                    .with_group_instance_id(Some(StrBytes::from(id))),
            )
        })
        .collect();
    if leaving.is_empty() {
        return Ok(Some(Vec::new()));
    }
    if !even_while_rebalancing && !SAFE_STATES.contains(&state.as_str()) {
        return Ok(None);
    }
    let request =
        LeaveGroupRequest::default().with_group_id(GroupId(StrBytes::from(group.to_owned()))).with_members(leaving);
    let answer = conn.call(&request, 3).await?;
    if answer.error_code != 0 {
        return Err(failed("LeaveGroup", answer.error_code, None));
    }
    let mut removed = Vec::new();
    for m in answer.members {
        let instance = m.group_instance_id.map(|i| i.as_str().to_owned()).unwrap_or_default();
        match m.error_code {
            0 => removed.push(instance),
            UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID => {}
            code => return Err(failed(&format!("LeaveGroup for member {instance}"), code, None)),
        }
    }
    Ok(Some(removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, instance: Option<&str>) -> Member {
        Member {
            member_id: id.into(),
            group_instance_id: instance.map(Into::into),
            client_id: String::new(),
            assignment: Vec::new(),
        }
    }

    #[test]
    fn a_static_members_instance_id_is_said_or_read_from_its_member_id() {
        let uuid = "0b5d3c1e-8f2a-4c44-9d7e-2f1a6b9c8d01";
        assert_eq!(member("x", Some("zoo.app-1")).instance_id().as_deref(), Some("zoo.app-1"));
        assert_eq!(member(&format!("zoo.app-10-{uuid}"), None).instance_id().as_deref(), Some("zoo.app-10"));
        assert_eq!(member("zoo.app-1-not-a-uuid-at-all-but-as-long-as-one!", None).instance_id(), None);
        assert_eq!(member("short", None).instance_id(), None);
    }
}
