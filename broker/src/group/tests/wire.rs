//! Answers encode at every version the crate supports; admin views; core routing.

use super::super::group_core;
use super::*;
use kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, ListGroupsRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Encodable, Message};

const G: &str = "wire";

/// Encodes `msg` at every version of its range; the encoder refuses fields a version lacks.
fn encodes_everywhere<M: Encodable + Message + std::fmt::Debug>(msg: &M) {
    for v in M::VERSIONS.min..=M::VERSIONS.max {
        let mut buf = bytes::BytesMut::new();
        msg.encode(&mut buf, v)
            .unwrap_or_else(|e| panic!("{msg:?} at v{v}: {e}"));
    }
}

/// Shapes per version and encodes (the handlers shape by version, so call them per version).
#[test]
fn every_answer_encodes_at_every_version() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        let c = &h.coord;
        for v in 0..=9 {
            let r = c.join_group(join_req(G, &ids[1], RANGE), v, "c", "h").await;
            assert_eq!(r.error_code, 0, "v{v}");
            let mut buf = bytes::BytesMut::new();
            r.encode(&mut buf, v).unwrap();
            let e = c.join_group(join_req(G, "ghost", RANGE), v, "c", "h").await;
            e.encode(&mut buf, v).unwrap();
        }
        for v in 0..=5 {
            let r = c.sync_group(sync_req(G, &ids[1], 1, &[]), v).await;
            assert_eq!(r.error_code, 0);
            r.encode(&mut bytes::BytesMut::new(), v).unwrap();
            let req = LeaveGroupRequest::default()
                .with_group_id(GroupId(s(G)))
                .with_member_id(s("ghost"));
            let req = if v >= 3 {
                req.with_member_id(StrBytes::new())
                    .with_members(vec![MemberIdentity::default().with_member_id(s("ghost"))])
            } else {
                req
            };
            let r = c.leave_group(req, v).await;
            assert_eq!(
                if v >= 3 {
                    r.members[0].error_code
                } else {
                    r.error_code
                },
                25,
                "v{v}"
            );
            r.encode(&mut bytes::BytesMut::new(), v).unwrap();
        }
        encodes_everywhere(
            &c.heartbeat(HeartbeatRequest::default().with_group_id(GroupId(s(G))), 4),
        );
        for v in 1..=9 {
            let req = if v >= 8 {
                OffsetFetchRequest::default().with_groups(vec![
                    kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(G))),
                ])
            } else {
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(G)))
                    .with_topics(None)
            };
            c.offset_fetch(req, v)
                .encode(&mut bytes::BytesMut::new(), v)
                .unwrap();
        }
        for v in 0..=5 {
            let r = c.list_groups(ListGroupsRequest::default(), v);
            assert_eq!(r.groups.len(), 1);
            r.encode(&mut bytes::BytesMut::new(), v).unwrap();
        }
        for v in 0..=6 {
            let req = DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(s(G)), GroupId(s("unknown"))]);
            c.describe_groups(req, v)
                .encode(&mut bytes::BytesMut::new(), v)
                .unwrap();
        }
        for v in 0..=6 {
            let req = FindCoordinatorRequest::default()
                .with_key(if v < 4 { s(G) } else { StrBytes::new() })
                .with_coordinator_keys(if v >= 4 {
                    vec![s(G), StrBytes::new()]
                } else {
                    vec![]
                });
            c.find_coordinator(req, v)
                .encode(&mut bytes::BytesMut::new(), v)
                .unwrap();
        }
    });
}

#[test]
fn find_coordinator_names_this_node() {
    run(|| async {
        let h = harness(config(0));
        let r = h
            .coord
            .find_coordinator(FindCoordinatorRequest::default().with_key(s("g")), 3);
        assert_eq!(
            (r.error_code, r.node_id.0, r.host.as_str(), r.port),
            (0, 1, "broker.test", 9092)
        );
        let req = FindCoordinatorRequest::default().with_coordinator_keys(vec![s("a"), s("")]);
        let r = h.coord.find_coordinator(req, 4);
        assert_eq!(
            (r.coordinators[0].error_code, r.coordinators[0].node_id.0),
            (0, 1)
        );
        assert_eq!(r.coordinators[1].error_code, 42);
        let r = h.coord.find_coordinator(
            FindCoordinatorRequest::default()
                .with_key(s("g"))
                .with_key_type(5),
            3,
        );
        assert_eq!(r.error_code, 42);
    });
}

#[test]
fn list_and_describe_groups() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        let (_x, _tx) = join_new(&h.coord, "rebalancing").await;
        let all = h.coord.list_groups(ListGroupsRequest::default(), 4);
        let listed: Vec<(String, String)> = all
            .groups
            .iter()
            .map(|g| (g.group_id.to_string(), g.group_state.to_string()))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("rebalancing".into(), "PreparingRebalance".into()),
                (G.into(), "Stable".into())
            ]
        );
        let stable_only = ListGroupsRequest::default().with_states_filter(vec![s("stable")]);
        assert_eq!(h.coord.list_groups(stable_only, 4).groups.len(), 1);
        let consumer_only = ListGroupsRequest::default().with_types_filter(vec![s("consumer")]);
        assert!(
            h.coord.list_groups(consumer_only, 5).groups.is_empty(),
            "all groups are classic"
        );
        let req =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s(G)), GroupId(s("nope"))]);
        let d = h.coord.describe_groups(req.clone(), 5);
        let g = &d.groups[0];
        assert_eq!(
            (
                g.group_state.as_str(),
                g.protocol_type.as_str(),
                g.protocol_data.as_str()
            ),
            ("Stable", "consumer", "range")
        );
        let members: Vec<_> = g.members.iter().map(|m| m.member_id.to_string()).collect();
        assert_eq!(members, ids);
        assert_eq!(
            g.members[0].member_assignment.as_ref(),
            format!("assign-{}", ids[0]).as_bytes()
        );
        assert_eq!(
            (d.groups[1].error_code, d.groups[1].group_state.as_str()),
            (0, "Dead")
        );
        assert_eq!(h.coord.describe_groups(req, 6).groups[1].error_code, 69);
    });
}

/// Catches the "not requested" marker (i32::MIN, bit 31) answered to a client that asked for
/// the groups' authorized operations: kafka-python asks in every DescribeGroups v3 request and
/// failed to decode bit 31 as an operation. Asked for: READ, DESCRIBE and DELETE (bits 3, 8, 6)
/// for known and unknown groups alike; not asked for: the marker.
#[test]
fn described_groups_carry_authorized_operations_when_asked_for() {
    run(|| async {
        let h = harness(config(100));
        stable_group(&h, G, 2).await;
        let groups = vec![GroupId(s(G)), GroupId(s("nope"))];
        let asked = DescribeGroupsRequest::default()
            .with_groups(groups.clone())
            .with_include_authorized_operations(true);
        for v in 3..=5 {
            let d = h.coord.describe_groups(asked.clone(), v);
            for g in &d.groups {
                assert_eq!(
                    g.authorized_operations, 0b1_0100_1000,
                    "v{v} {:?}",
                    g.group_id
                );
            }
            d.encode(&mut bytes::BytesMut::new(), v).unwrap();
        }
        let not_asked = DescribeGroupsRequest::default().with_groups(groups);
        let d = h.coord.describe_groups(not_asked, 3);
        assert!(d.groups.iter().all(|g| g.authorized_operations == i32::MIN));
    });
}

#[test]
fn group_core_is_fnv1a_and_spreads() {
    // FNV-1a 64 test vector: "a" hashes to 0xaf63dc4c8601ec8c.
    assert_eq!(
        group_core("a", 1_000_003),
        (0xaf63_dc4c_8601_ec8c_u64 % 1_000_003) as usize
    );
    assert_eq!(group_core("", 7), (0xcbf2_9ce4_8422_2325_u64 % 7) as usize);
    let mut counts = [0usize; 4];
    for i in 0..1000 {
        counts[group_core(&format!("group-{i}"), 4)] += 1;
    }
    assert!(counts.iter().all(|&n| n > 150), "{counts:?}");
}
