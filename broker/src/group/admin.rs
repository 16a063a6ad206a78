//! FindCoordinator, ListGroups and DescribeGroups: read-only views of the coordinator.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::state::{Group, GroupState, NONE};
use super::{GroupCoordinator, GroupLog, MAX_GROUP_ID_BYTES};
use crate::admin::{authorized_operations, AclResource};

const INVALID_REQUEST: i16 = ResponseError::InvalidRequest.code();
const INVALID_GROUP_ID: i16 = ResponseError::InvalidGroupId.code();
const GROUP_ID_NOT_FOUND: i16 = ResponseError::GroupIdNotFound.code();

/// FindCoordinator key types: consumer group, transactional id.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// FindCoordinator answers one key per coordinator entry from this version.
const BATCHED_FIND_COORDINATOR_VERSION: i16 = 4;
/// DescribeGroups answers GROUP_ID_NOT_FOUND for an unknown group from this version (older
/// versions describe it as Dead with no error).
const DESCRIBE_NOT_FOUND_VERSION: i16 = 6;
/// The group type ListGroups v5 reports for every group held here.
const CLASSIC_GROUP_TYPE: &str = "classic";

impl<L: GroupLog> GroupCoordinator<L> {
    /// Every key is coordinated by this node (single-node broker).
    pub fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let key_type_ok = matches!(req.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
        let code_for = |key: &str| {
            if !key_type_ok || key.is_empty() || key.len() > MAX_GROUP_ID_BYTES {
                INVALID_REQUEST
            } else {
                NONE
            }
        };
        let (host, port, node) = (&self.config.host, self.config.port, self.config.node_id);
        if version >= BATCHED_FIND_COORDINATOR_VERSION {
            let coordinators = req
                .coordinator_keys
                .iter()
                .map(|key| {
                    let code = code_for(key.as_str());
                    let (node, host, port) = if code == NONE {
                        (node, StrBytes::from_string(host.clone()), port)
                    } else {
                        (-1, StrBytes::new(), -1)
                    };
                    Coordinator::default()
                        .with_key(key.clone())
                        .with_node_id(BrokerId(node))
                        .with_host(host)
                        .with_port(port)
                        .with_error_code(code)
                })
                .collect();
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        let code = code_for(req.key.as_str());
        let mut response = FindCoordinatorResponse::default().with_error_code(code);
        if code == NONE {
            response.node_id = BrokerId(node);
            response.host = StrBytes::from_string(host.clone());
            response.port = port;
        } else {
            response.node_id = BrokerId(-1);
            response.port = -1;
        }
        if version >= 1 {
            response.error_message =
                (code != NONE).then(|| StrBytes::from_static_str("invalid key"));
        }
        response
    }

    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let inner = self.inner.borrow();
        let state_ok = |g: &Group| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(g.state.as_str()))
        };
        let type_ok = req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(CLASSIC_GROUP_TYPE));
        let mut groups: Vec<ListedGroup> = inner
            .groups
            .values()
            .filter(|g| g.state != GroupState::Dead && type_ok && state_ok(g))
            .map(|g| {
                let mut listed = ListedGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(g.id.clone())))
                    .with_protocol_type(StrBytes::from_string(
                        g.protocol_type.clone().unwrap_or_default(),
                    ));
                if version >= 4 {
                    listed.group_state = StrBytes::from_static_str(g.state.as_str());
                }
                if version >= 5 {
                    listed.group_type = StrBytes::from_static_str(CLASSIC_GROUP_TYPE);
                }
                listed
            })
            .collect();
        groups.sort_by(|a, b| a.group_id.as_str().cmp(b.group_id.as_str()));
        ListGroupsResponse::default().with_groups(groups)
    }

    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let inner = self.inner.borrow();
        // Asked for from v3 on; kafka-python asks in every v3 request.
        let operations =
            authorized_operations(AclResource::Group, req.include_authorized_operations);
        let groups = req
            .groups
            .iter()
            .map(|id| {
                let name = id.as_str();
                if name.is_empty() || name.len() > MAX_GROUP_ID_BYTES {
                    return DescribedGroup::default()
                        .with_group_id(id.clone())
                        .with_error_code(INVALID_GROUP_ID);
                }
                let described = match inner.groups.get(name) {
                    Some(group) => describe(group, version),
                    None => {
                        let mut dead = DescribedGroup::default()
                            .with_group_id(id.clone())
                            .with_group_state(StrBytes::from_static_str(GroupState::Dead.as_str()));
                        if version >= DESCRIBE_NOT_FOUND_VERSION {
                            dead.error_code = GROUP_ID_NOT_FOUND;
                            dead.error_message =
                                Some(StrBytes::from_string(format!("Group {name} not found.")));
                        }
                        dead
                    }
                };
                described.with_authorized_operations(operations)
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }
}

/// A Stable group shows its protocol and each member's metadata and assignment; other states
/// show the members only (as Kafka does).
fn describe(group: &Group, version: i16) -> DescribedGroup {
    let stable = group.state == GroupState::Stable;
    let protocol = if stable {
        group.protocol_name.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let members = group
        .members_in_join_order()
        .into_iter()
        .map(|m| {
            let mut d = DescribedGroupMember::default()
                .with_member_id(StrBytes::from_string(m.id.clone()))
                .with_client_id(StrBytes::from_string(m.client_id.clone()))
                .with_client_host(StrBytes::from_string(m.client_host.clone()));
            if version >= 4 {
                d.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
            }
            if stable {
                d.member_metadata = m.metadata_for(&protocol);
                d.member_assignment = m.assignment.clone();
            }
            d
        })
        .collect();
    DescribedGroup::default()
        .with_group_id(GroupId(StrBytes::from_string(group.id.clone())))
        .with_group_state(StrBytes::from_static_str(group.state.as_str()))
        .with_protocol_type(StrBytes::from_string(
            group.protocol_type.clone().unwrap_or_default(),
        ))
        .with_protocol_data(StrBytes::from_string(protocol))
        .with_members(members)
}
