//! Join, sync, heartbeat, leave, timeouts, static members, limits.

use super::super::GroupState;
use super::*;

const G: &str = "orders";

/// Rejoins `ids` (as tasks) and returns their join responses once the phase completes.
async fn rejoin_all(h: &Harness, ids: &[String]) -> Vec<JoinGroupResponse> {
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| spawn_join(&h.coord, join_req(G, id, RANGE)))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await);
    }
    out
}

#[test]
fn three_members_join_and_sync_one_generation() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 3).await;
        assert_eq!(h.coord.group_state(G), Some(GroupState::Stable));
        assert_eq!(ids.len(), 3);
        for id in &ids {
            assert_eq!(heartbeat(&h.coord, G, id, 1), 0);
        }
        // The leader's SyncGroup stored the generation before anyone got an assignment.
        assert_eq!(h.log.batches.borrow().len(), 1);
    });
}

#[test]
fn leader_gets_the_members_and_followers_do_not() {
    run(|| async {
        let h = harness(config(100));
        let (a, ta) = join_new(&h.coord, G).await;
        let (b, tb) = join_new(&h.coord, G).await;
        let (c, g, bb) = (h.coord.clone(), G, b.clone());
        until("b awaits", move || awaiting_join(&c, g, &bb)).await;
        h.clock.advance_ms(100);
        h.coord.tick();
        let (ra, rb) = (ta.await, tb.await);
        assert_eq!(
            (ra.leader.as_str(), rb.leader.as_str()),
            (a.as_str(), a.as_str())
        );
        let listed: Vec<_> = ra.members.iter().map(|m| m.member_id.to_string()).collect();
        assert_eq!(listed, vec![a.clone(), b.clone()]);
        assert_eq!(ra.members[1].metadata.as_ref(), b"sub");
        assert!(rb.members.is_empty());
        assert_eq!(ra.protocol_name.as_deref(), Some("range"));
    });
}

#[test]
fn fourth_member_triggers_a_rebalance() {
    run(|| async {
        let h = harness(config(100));
        let mut ids = stable_group(&h, G, 3).await;
        let (d, td) = join_new(&h.coord, G).await;
        assert_eq!(h.coord.group_state(G), Some(GroupState::PreparingRebalance));
        for id in &ids {
            assert_eq!(heartbeat(&h.coord, G, id, 1), 27, "REBALANCE_IN_PROGRESS");
        }
        let rejoined = rejoin_all(&h, &ids).await;
        let rd = td.await;
        ids.push(d);
        assert!(rejoined
            .iter()
            .chain([&rd])
            .all(|r| r.error_code == 0 && r.generation_id == 2));
        assert_eq!(rejoined[0].members.len(), 4, "the leader sees all four");
        assert_eq!(
            h.coord.group_state(G),
            Some(GroupState::CompletingRebalance)
        );
        assert_eq!(
            heartbeat(&h.coord, G, &ids[0], 1),
            22,
            "old generation is illegal"
        );
    });
}

#[test]
fn a_leaving_member_triggers_a_rebalance() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 3).await;
        assert_eq!(leave(&h.coord, G, &[&ids[2]]).await, vec![0]);
        assert_eq!(h.coord.group_state(G), Some(GroupState::PreparingRebalance));
        assert_eq!(
            heartbeat(&h.coord, G, &ids[2], 1),
            25,
            "gone member is unknown"
        );
        let rejoined = rejoin_all(&h, &ids[..2]).await;
        assert!(rejoined.iter().all(|r| r.generation_id == 2));
        assert_eq!(rejoined[0].members.len(), 2);
        assert_eq!(leave(&h.coord, G, &["nobody"]).await, vec![25]);
    });
}

#[test]
fn last_member_leaving_empties_the_group() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 1).await;
        assert_eq!(leave(&h.coord, G, &[&ids[0]]).await, vec![0]);
        assert_eq!(h.coord.group_state(G), Some(GroupState::Empty));
    });
}

#[test]
fn session_timeout_removes_a_silent_member() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 3).await;
        let half = SESSION_MS as u64 / 2 + 1;
        h.clock.advance_ms(half);
        h.coord.tick();
        assert_eq!(heartbeat(&h.coord, G, &ids[0], 1), 0);
        assert_eq!(heartbeat(&h.coord, G, &ids[1], 1), 0);
        h.clock.advance_ms(half);
        h.coord.tick();
        assert_eq!(h.coord.group_state(G), Some(GroupState::PreparingRebalance));
        assert_eq!(
            heartbeat(&h.coord, G, &ids[2], 1),
            25,
            "expired member was removed"
        );
        assert_eq!(heartbeat(&h.coord, G, &ids[0], 1), 27);
        let rejoined = rejoin_all(&h, &ids[..2]).await;
        assert_eq!(rejoined[0].members.len(), 2);
    });
}

#[test]
fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 3).await;
        let (d, td) = join_new(&h.coord, G).await;
        let ta = spawn_join(&h.coord, join_req(G, &ids[0], RANGE));
        let (c, a) = (h.coord.clone(), ids[0].clone());
        until("a rejoined", move || awaiting_join(&c, G, &a)).await;
        // b and c keep heartbeating but never rejoin.
        h.clock.advance_ms(REBALANCE_MS as u64 - 1);
        assert_eq!(heartbeat(&h.coord, G, &ids[1], 1), 27);
        h.coord.tick();
        assert_eq!(h.coord.group_state(G), Some(GroupState::PreparingRebalance));
        h.clock.advance_ms(1);
        h.coord.tick();
        let (ra, rd) = (ta.await, td.await);
        assert_eq!((ra.generation_id, rd.generation_id), (2, 2));
        let listed: Vec<_> = ra.members.iter().map(|m| m.member_id.to_string()).collect();
        assert_eq!(listed, vec![ids[0].clone(), d]);
        assert_eq!(heartbeat(&h.coord, G, &ids[1], 2), 25);
    });
}

#[test]
fn a_leader_that_never_syncs_is_removed_at_the_sync_timeout() {
    run(|| async {
        let h = harness(config(100));
        let (a, ta) = join_new(&h.coord, G).await;
        let (b, tb) = join_new(&h.coord, G).await;
        let (c, bb) = (h.coord.clone(), b.clone());
        until("b awaits", move || awaiting_join(&c, G, &bb)).await;
        h.clock.advance_ms(100);
        h.coord.tick();
        let _ = (ta.await, tb.await);
        let follower = spawn_sync(&h.coord, sync_req(G, &b, 1, &[]));
        let c = h.coord.clone();
        until("follower waits", move || {
            c.inner.borrow().groups[G].members[&b].sync_tx.is_some()
        })
        .await;
        // The leader stays alive (heartbeats) but never sends SyncGroup.
        for _ in 0..4 {
            h.clock.advance_ms(REBALANCE_MS as u64 / 4 + 1);
            assert_eq!(heartbeat(&h.coord, G, &a, 1), 0);
            h.coord.tick();
        }
        assert_eq!(follower.await.error_code, 27, "follower told to rejoin");
        assert_eq!(heartbeat(&h.coord, G, &a, 1), 25, "silent leader removed");
    });
}

#[test]
fn wrong_generation_and_unknown_member_are_refused() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        assert_eq!(heartbeat(&h.coord, G, &ids[0], 7), 22);
        assert_eq!(heartbeat(&h.coord, G, "ghost", 1), 25);
        assert_eq!(heartbeat(&h.coord, "no-such-group", &ids[0], 1), 25);
        assert_eq!(heartbeat(&h.coord, "", &ids[0], 1), 24);
        let r = h.coord.sync_group(sync_req(G, &ids[1], 3, &[]), 5).await;
        assert_eq!(r.error_code, 22);
        let r = h.coord.sync_group(sync_req(G, "ghost", 1, &[]), 5).await;
        assert_eq!(r.error_code, 25);
        let r = h
            .coord
            .join_group(join_req(G, "ghost", RANGE), 5, "c", "h")
            .await;
        assert_eq!(r.error_code, 25);
        // A follower's repeated SyncGroup in Stable gets its assignment again.
        let r = h.coord.sync_group(sync_req(G, &ids[1], 1, &[]), 5).await;
        assert_eq!(
            (r.error_code, r.assignment.as_ref()),
            (0, format!("assign-{}", ids[1]).as_bytes())
        );
    });
}

#[test]
fn sync_during_a_rebalance_is_refused() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        let (_d, _td) = join_new(&h.coord, G).await;
        let r = h.coord.sync_group(sync_req(G, &ids[1], 1, &[]), 5).await;
        assert_eq!(r.error_code, 27);
    });
}

#[test]
fn member_id_required_and_unused_ids_expire() {
    run(|| async {
        let h = harness(config(100));
        let ids = stable_group(&h, G, 2).await;
        assert_eq!(leave(&h.coord, G, &[&ids[1]]).await, vec![0]);
        let first = h
            .coord
            .join_group(join_req(G, "", RANGE), 4, "cli", "h")
            .await;
        assert_eq!((first.error_code, first.generation_id), (79, -1));
        let ta = spawn_join(&h.coord, join_req(G, &ids[0], RANGE));
        let (c, a) = (h.coord.clone(), ids[0].clone());
        until("a rejoined", move || awaiting_join(&c, G, &a)).await;
        h.coord.tick();
        assert_eq!(
            h.coord.group_state(G),
            Some(GroupState::PreparingRebalance),
            "the unused id holds the join phase open"
        );
        h.clock.advance_ms(SESSION_MS as u64);
        h.coord.tick();
        let r = ta.await;
        assert_eq!((r.error_code, r.generation_id, r.members.len()), (0, 2, 1));
        let late = h
            .coord
            .join_group(join_req(G, &first.member_id, RANGE), 4, "cli", "h")
            .await;
        assert_eq!(late.error_code, 25, "expired pending id is unknown");
        // Clients before v4 are admitted at once, without the round trip.
        let h0 = harness(config(0));
        let r = h0
            .coord
            .join_group(join_req("fresh", "", RANGE), 3, "old", "h")
            .await;
        assert_eq!((r.error_code, r.generation_id), (0, 1));
        assert!(r.member_id.starts_with("old-"), "{}", r.member_id.as_str());
    });
}

#[test]
fn initial_delay_zero_completes_a_lone_member_at_once() {
    run(|| async {
        let h = harness(config(0));
        let (a, ta) = join_new(&h.coord, G).await;
        let r = ta.await;
        assert_eq!(
            (r.error_code, r.generation_id, r.leader.as_str()),
            (0, 1, a.as_str())
        );
    });
}

#[test]
fn join_validation_errors() {
    run(|| async {
        let h = harness(config(0));
        let c = &h.coord;
        let bad_session = join_req(G, "", RANGE).with_session_timeout_ms(10);
        assert_eq!(c.join_group(bad_session, 5, "c", "h").await.error_code, 26);
        let too_long = join_req(G, "", RANGE).with_session_timeout_ms(120_000);
        assert_eq!(c.join_group(too_long, 5, "c", "h").await.error_code, 26);
        assert_eq!(
            c.join_group(join_req("", "", RANGE), 5, "c", "h")
                .await
                .error_code,
            24
        );
        assert_eq!(
            c.join_group(join_req(G, "", &[]), 5, "c", "h")
                .await
                .error_code,
            23
        );
        let huge = vec![0u8; super::super::MAX_PROTOCOL_METADATA_BYTES + 1];
        let r = c
            .join_group(join_req(G, "", &[("range", &huge)]), 5, "c", "h")
            .await;
        assert_eq!(r.error_code, 42);
        let long_name = "x".repeat(super::super::MAX_PROTOCOL_NAME_BYTES + 1);
        let r = c
            .join_group(join_req(G, "", &[(long_name.as_str(), b"")]), 5, "c", "h")
            .await;
        assert_eq!(
            r.error_code, 42,
            "protocol names are bounded before they reach the log"
        );
        let (_a, ta) = join_new(c, G).await;
        assert_eq!(ta.await.error_code, 0);
        // A member offering only a protocol the group does not use cannot join.
        let other = join_req(G, "", &[("sticky", b"x")]);
        assert_eq!(c.join_group(other, 5, "c", "h").await.error_code, 23);
        let other_type = join_req(G, "", RANGE).with_protocol_type(s("connect"));
        assert_eq!(c.join_group(other_type, 5, "c", "h").await.error_code, 23);
    });
}

#[test]
fn the_protocol_all_members_support_is_chosen() {
    run(|| async {
        let h = harness(config(100));
        let (_, a) = join_new_with(&h.coord, G, &[("sticky", b"a"), ("range", b"a")]).await;
        let c = h.coord.clone();
        until("a joined", move || {
            c.inner.borrow().groups[G].members.len() == 1
        })
        .await;
        let (_, b) = join_new_with(&h.coord, G, &[("roundrobin", b"b"), ("range", b"b")]).await;
        let c = h.coord.clone();
        until("b joined", move || {
            c.inner.borrow().groups[G].members.len() == 2
        })
        .await;
        h.clock.advance_ms(100);
        h.coord.tick();
        let (ra, rb) = (a.await, b.await);
        assert_eq!(ra.protocol_name.as_deref(), Some("range"));
        assert_eq!(rb.protocol_name.as_deref(), Some("range"));
        assert!(ra
            .members
            .iter()
            .all(|m| m.metadata.as_ref() == b"a" || m.metadata.as_ref() == b"b"));
    });
}

#[test]
fn member_and_group_limits() {
    run(|| async {
        let h = harness(config(100));
        for _ in 0..5 {
            let (_id, t) = join_new(&h.coord, G).await;
            t.detach();
        }
        let r = h
            .coord
            .join_group(join_req(G, "", RANGE), 5, "c", "h")
            .await;
        assert_eq!(r.error_code, 81, "GROUP_MAX_SIZE_REACHED");
        for i in 0..9 {
            let r = h
                .coord
                .join_group(join_req(&format!("g{i}"), "", RANGE), 5, "c", "h")
                .await;
            assert_eq!(r.error_code, 79);
        }
        let r = h
            .coord
            .join_group(join_req("one-too-many", "", RANGE), 5, "c", "h")
            .await;
        assert_eq!(
            r.error_code, 15,
            "group limit answers COORDINATOR_NOT_AVAILABLE"
        );
        assert_eq!(h.coord.group_count(), 10);
    });
}

#[test]
fn static_member_restart_fences_the_old_id() {
    run(|| async {
        let h = harness(config(0));
        let req = join_req(G, "", RANGE).with_group_instance_id(Some(s("pod-1")));
        let first = h.coord.join_group(req.clone(), 5, "c", "h").await;
        assert_eq!(
            (first.error_code, first.generation_id),
            (0, 1),
            "no MEMBER_ID_REQUIRED for static"
        );
        let old_id = first.member_id.to_string();
        let sync = sync_req(G, &old_id, 1, &[(old_id.as_str(), b"p0")]);
        assert_eq!(h.coord.sync_group(sync, 5).await.error_code, 0);
        // The instance restarts and joins without its member id.
        let second = h.coord.join_group(req, 5, "c", "h").await;
        assert_eq!((second.error_code, second.generation_id), (0, 2));
        assert_ne!(second.member_id.as_str(), old_id);
        let hb = HeartbeatRequest::default()
            .with_group_id(GroupId(s(G)))
            .with_member_id(s(&old_id))
            .with_generation_id(2)
            .with_group_instance_id(Some(s("pod-1")));
        assert_eq!(
            h.coord.heartbeat(hb, 4).error_code,
            82,
            "FENCED_INSTANCE_ID"
        );
        let leave = LeaveGroupRequest::default()
            .with_group_id(GroupId(s(G)))
            .with_members(vec![
                MemberIdentity::default()
                    .with_member_id(s(&old_id))
                    .with_group_instance_id(Some(s("pod-1"))),
                MemberIdentity::default().with_group_instance_id(Some(s("pod-1"))),
            ]);
        let codes: Vec<i16> = h
            .coord
            .leave_group(leave, 5)
            .await
            .members
            .iter()
            .map(|m| m.error_code)
            .collect();
        assert_eq!(codes, vec![82, 0]);
        assert_eq!(h.coord.group_state(G), Some(GroupState::Empty));
    });
}

#[test]
fn the_timer_driver_expires_sessions_on_real_time() {
    run(|| async {
        let mut cfg = config(0);
        cfg.group_min_session_timeout_ms = 10;
        let coord = Rc::new(GroupCoordinator::new(cfg, MemLog::default()));
        coord.start();
        let req = join_req(G, "", RANGE).with_session_timeout_ms(20);
        let r = coord.join_group(req, 3, "c", "h").await;
        assert_eq!((r.error_code, r.generation_id), (0, 1));
        // Wait (bounded) for the driver to notice the lapsed session: the member leaves and the
        // group empties at generation 2.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while coord.group_state(G) != Some(GroupState::Empty) {
            assert!(
                std::time::Instant::now() < give_up,
                "driver never expired the session"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(heartbeat(&coord, G, &r.member_id, 1), 25);
    });
}

#[test]
fn the_initial_delay_extends_while_members_keep_arriving() {
    run(|| async {
        let h = harness(config(100));
        let (a, ta) = join_new(&h.coord, G).await;
        let (c, aa) = (h.coord.clone(), a.clone());
        until("a awaits", move || awaiting_join(&c, G, &aa)).await;
        h.clock.advance_ms(60);
        let (b, tb) = join_new(&h.coord, G).await;
        let (c, bb) = (h.coord.clone(), b.clone());
        until("b awaits", move || awaiting_join(&c, G, &bb)).await;
        h.clock.advance_ms(60);
        h.coord.tick();
        assert_eq!(
            h.coord.group_state(G),
            Some(GroupState::PreparingRebalance),
            "extended"
        );
        h.clock.advance_ms(40);
        h.coord.tick();
        let (ra, rb) = (ta.await, tb.await);
        assert_eq!(
            (ra.generation_id, rb.generation_id, ra.members.len()),
            (1, 1, 2)
        );
    });
}

#[test]
fn a_static_follower_restarting_keeps_its_assignment_without_a_rebalance() {
    run(|| async {
        let h = harness(config(100));
        let static_join = |pod: &str| join_req(G, "", RANGE).with_group_instance_id(Some(s(pod)));
        let ta = spawn_join(&h.coord, static_join("pod-a"));
        let tb = spawn_join(&h.coord, static_join("pod-b"));
        let c = h.coord.clone();
        until("both joined", move || {
            c.inner
                .borrow()
                .groups
                .get(G)
                .is_some_and(|g| g.members.len() == 2)
        })
        .await;
        h.clock.advance_ms(100);
        h.coord.tick();
        let (ra, rb) = (ta.await, tb.await);
        let (a, b) = (ra.member_id.to_string(), rb.member_id.to_string());
        assert_eq!((ra.leader.as_str(), ra.generation_id), (a.as_str(), 1));
        let follower = spawn_sync(&h.coord, sync_req(G, &b, 1, &[]));
        let assign = [(a.as_str(), &b"pa"[..]), (b.as_str(), &b"pb"[..])];
        assert_eq!(
            h.coord
                .sync_group(sync_req(G, &a, 1, &assign), 5)
                .await
                .error_code,
            0
        );
        assert_eq!(follower.await.assignment.as_ref(), b"pb");
        // pod-b restarts: same generation, no rebalance, its assignment is kept.
        let again = h.coord.join_group(static_join("pod-b"), 5, "c", "h").await;
        let b2 = again.member_id.to_string();
        assert_eq!(
            (again.error_code, again.generation_id, again.leader.as_str()),
            (0, 1, a.as_str())
        );
        assert_ne!(b2, b);
        assert_eq!(h.coord.group_state(G), Some(GroupState::Stable));
        let r = h.coord.sync_group(sync_req(G, &b2, 1, &[]), 5).await;
        assert_eq!((r.error_code, r.assignment.as_ref()), (0, &b"pb"[..]));
        assert_eq!(
            heartbeat(&h.coord, G, &a, 1),
            0,
            "the leader saw no rebalance"
        );
        let hb = HeartbeatRequest::default()
            .with_group_id(GroupId(s(G)))
            .with_member_id(s(&b))
            .with_generation_id(1)
            .with_group_instance_id(Some(s("pod-b")));
        assert_eq!(
            h.coord.heartbeat(hb, 4).error_code,
            82,
            "the old id is fenced"
        );
        // The leader restarting does rebalance (it must recompute the assignment).
        let t = spawn_join(&h.coord, static_join("pod-a"));
        let c = h.coord.clone();
        until("rebalancing", move || {
            c.group_state(G) == Some(GroupState::PreparingRebalance)
        })
        .await;
        let rb2 = spawn_join(
            &h.coord,
            join_req(G, &b2, RANGE).with_group_instance_id(Some(s("pod-b"))),
        );
        let (ra2, rb2) = (t.await, rb2.await);
        assert_eq!((ra2.generation_id, rb2.generation_id), (2, 2));
        assert_eq!(
            ra2.leader, ra2.member_id,
            "the restarted leader still leads"
        );
    });
}
