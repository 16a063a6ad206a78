//! AlterConfigs (API 33) and IncrementalAlterConfigs (API 44): changing a topic's own configs
//! after CreateTopics (`kafka-configs --alter --entity-type topics`, an admin client's
//! `alter_configs` / `incremental_alter_configs`).
//!
//! ```text
//!  connection's core: one Ask per resource ── BROKER, other types, duplicates: answered here
//!        │ topic asks
//!        ▼
//!  core 0: change_metadata(plan) ── per topic: the new explicit set, validated
//!        │                           one TopicConfigsChanged per changed topic, one batch,
//!        │                           appended Durable, then installed on every core
//!        ▼
//!  one result per resource, in request order
//! ```
//!
//! A topic's explicit configs are one set. AlterConfigs replaces it: keys not given revert to
//! the broker's defaults, as in Kafka. IncrementalAlterConfigs edits it: SET and DELETE (back
//! to the default); APPEND and SUBTRACT only apply to list configs, and no config ringmq
//! applies is a list, so they are INVALID_CONFIG, as Kafka answers them on such keys. The new
//! set is durable in the metadata log before the answer says success, and installed on every
//! core before the answer, so DescribeConfigs on any connection and every core's
//! [`crate::topic_retention`] task see it at once, without a restart.
//!
//! Only the configs ringmq applies can be changed ([`ALTERABLE_TOPIC_CONFIGS`]): accepting a
//! change the broker stores but ignores would claim a behaviour it does not have. Each resource
//! is answered on its own: a bad one does not fail the others of the request.

use crate::admin::{RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::core::{current, Core};
use crate::errors;
use crate::metadata::{default_topic_configs, MetaEvent, Snapshot};
use crate::produce::TIMESTAMP_TYPE_CONFIG;
use crate::topic_retention::{topic_limits, RETENTION_BYTES_CONFIG, RETENTION_MS_CONFIG};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

/// The topic configs ringmq applies, hence the ones AlterConfigs may set.
pub const ALTERABLE_TOPIC_CONFIGS: &[&str] = &[
    RETENTION_MS_CONFIG,
    RETENTION_BYTES_CONFIG,
    TIMESTAMP_TYPE_CONFIG,
];

/// IncrementalAlterConfigs operations (Kafka's `AlterConfigOp.OpType` codes).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The values `message.timestamp.type` takes.
const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];

/// Checks the values of the topic configs ringmq applies (other keys pass: CreateTopics stores
/// and reports them). The one check of topic config values: CreateTopics and both alter APIs
/// call it on the topic's whole resulting set. The error is the message for INVALID_CONFIG.
pub fn validate_topic_configs(configs: &BTreeMap<String, String>) -> Result<(), String> {
    topic_limits(configs)?;
    match configs.get(TIMESTAMP_TYPE_CONFIG) {
        Some(v) if !TIMESTAMP_TYPES.contains(&v.as_str()) => Err(format!(
            "{TIMESTAMP_TYPE_CONFIG} must be one of {TIMESTAMP_TYPES:?}, got {v:?}"
        )),
        _ => Ok(()),
    }
}

/// AlterConfigs: each resource's configs replace the topic's whole explicit set.
pub async fn alter_configs(
    core: &Rc<Core>,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let asks = req
        .resources
        .iter()
        .map(|r| Ask {
            resource_type: r.resource_type,
            name: r.resource_name.to_string(),
            edit: Edit::Replace(
                r.configs
                    .iter()
                    .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                    .collect(),
            ),
        })
        .collect();
    let outcomes = alter(core, asks, req.validate_only).await;
    let responses = req
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(r, (code, message))| {
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: each resource's operations edit the topic's explicit set.
pub async fn incremental_alter_configs(
    core: &Rc<Core>,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let asks = req
        .resources
        .iter()
        .map(|r| Ask {
            resource_type: r.resource_type,
            name: r.resource_name.to_string(),
            edit: Edit::Incremental(
                r.configs
                    .iter()
                    .map(|c| {
                        let value = c.value.as_ref().map(|v| v.to_string());
                        (c.name.to_string(), c.config_operation, value)
                    })
                    .collect(),
            ),
        })
        .collect();
    let outcomes = alter(core, asks, req.validate_only).await;
    let responses = req
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(r, (code, message))| {
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// What one resource of a request asks for.
#[derive(Debug, Clone)]
struct Ask {
    resource_type: i8,
    name: String,
    edit: Edit,
}

#[derive(Debug, Clone)]
enum Edit {
    /// AlterConfigs: the whole new set; a null value leaves the key out, as Kafka does.
    Replace(Vec<(String, Option<String>)>),
    /// IncrementalAlterConfigs: (key, operation code, value) applied to the current set.
    Incremental(Vec<(String, i8, Option<String>)>),
}

/// A resource's answer: error code and message.
type Outcome = (i16, Option<String>);

/// Answers every ask, in order: topics through core 0's metadata writer, the rest here.
async fn alter(core: &Core, asks: Vec<Ask>, validate_only: bool) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = not_for_topics(&asks);
    let topic_asks: Vec<(String, Edit)> = asks
        .into_iter()
        .zip(&outcomes)
        .filter(|(_, early)| early.is_none())
        .map(|(ask, _)| (ask.name, ask.edit))
        .collect();
    let n = topic_asks.len();
    let planned = if n == 0 {
        Vec::new()
    } else {
        let result = core
            .mesh
            .call(0, move || async move {
                current()
                    .change_metadata(|snap| plan(snap, &topic_asks, validate_only))
                    .await
                    .map(|(_, outcomes)| outcomes)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        result.unwrap_or_else(|e| {
            tracing::error!("alter configs failed: {e}");
            vec![(errors::UNKNOWN_SERVER_ERROR, Some(e)); n]
        })
    };
    let mut planned = planned.into_iter();
    for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
        *slot = planned.next();
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or((errors::UNKNOWN_SERVER_ERROR, None)))
        .collect()
}

/// The answers that need no metadata: a resource named twice, a broker, another type. `None`
/// for the topic asks to plan on core 0.
fn not_for_topics(asks: &[Ask]) -> Vec<Option<Outcome>> {
    let mut seen: HashMap<(i8, &str), usize> = HashMap::new();
    for ask in asks {
        *seen.entry((ask.resource_type, &ask.name)).or_default() += 1;
    }
    asks.iter()
        .map(|ask| {
            if seen[&(ask.resource_type, ask.name.as_str())] > 1 {
                return Some((
                    errors::INVALID_REQUEST,
                    Some(format!("resource {} is named more than once", ask.name)),
                ));
            }
            match ask.resource_type {
                RESOURCE_TOPIC => None,
                // Kafka answers a broker config it cannot change at runtime with
                // INVALID_REQUEST ("Cannot update these configs dynamically": its
                // ConfigException is wrapped as InvalidRequestException), not INVALID_CONFIG,
                // which says the value is wrong. Every ringmq broker config is a command-line
                // flag, none dynamic.
                RESOURCE_BROKER => Some((
                    errors::INVALID_REQUEST,
                    Some(
                        "ringmq's broker configs cannot be changed at runtime: they are \
                         command-line flags (restart with new ones)"
                            .to_owned(),
                    ),
                )),
                other => Some((
                    errors::INVALID_REQUEST,
                    Some(format!(
                        "configs of resource type {other} cannot be altered"
                    )),
                )),
            }
        })
        .collect()
}

/// Core 0, under the metadata lock: the events and answers of the topic asks against `snap`.
/// Nothing is logged for a validate-only request or for a set that does not change.
fn plan(
    snap: &Snapshot,
    asks: &[(String, Edit)],
    validate_only: bool,
) -> (Vec<MetaEvent>, Vec<Outcome>) {
    let mut events = Vec::new();
    let outcomes = asks
        .iter()
        .map(|(name, edit)| {
            let Some(topic) = snap.topic(name) else {
                return (
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(format!("unknown topic {name}")),
                );
            };
            match edited(&topic.configs, edit) {
                Ok(configs) => {
                    if !validate_only && configs != topic.configs {
                        events.push(MetaEvent::TopicConfigsChanged {
                            name: name.clone(),
                            configs,
                        });
                    }
                    (errors::NONE, None)
                }
                Err(refusal) => refusal,
            }
        })
        .collect();
    (events, outcomes)
}

/// The topic's explicit set after `edit`, validated as a whole.
fn edited(
    current: &BTreeMap<String, String>,
    edit: &Edit,
) -> Result<BTreeMap<String, String>, Outcome> {
    let keys: Vec<&str> = match edit {
        Edit::Replace(given) => given.iter().map(|(k, _)| k.as_str()).collect(),
        Edit::Incremental(ops) => ops.iter().map(|(k, _, _)| k.as_str()).collect(),
    };
    let mut distinct = HashSet::with_capacity(keys.len());
    if let Some(twice) = keys.iter().find(|k| !distinct.insert(**k)) {
        return Err((
            errors::INVALID_REQUEST,
            Some(format!("config {twice} is named more than once")),
        ));
    }
    let next = match edit {
        Edit::Replace(given) => {
            let mut next = BTreeMap::new();
            for (key, value) in given {
                alterable(key)?;
                if let Some(value) = value {
                    next.insert(key.clone(), value.clone());
                }
            }
            next
        }
        Edit::Incremental(ops) => {
            let mut next = current.clone();
            for (key, op, value) in ops {
                apply_op(&mut next, key, *op, value.as_deref())?;
            }
            next
        }
    };
    validate_topic_configs(&next).map_err(|m| (errors::INVALID_CONFIG, Some(m)))?;
    Ok(next)
}

/// One IncrementalAlterConfigs operation on `configs`.
fn apply_op(
    configs: &mut BTreeMap<String, String>,
    key: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), Outcome> {
    match op {
        OP_SET => {
            alterable(key)?;
            let value = value.ok_or_else(|| {
                (
                    errors::INVALID_REQUEST,
                    Some(format!("SET of {key} has no value")),
                )
            })?;
            configs.insert(key.to_owned(), value.to_owned());
        }
        // Any key may be removed: one stored at CreateTopics that ringmq does not apply too.
        OP_DELETE => {
            configs.remove(key);
        }
        OP_APPEND | OP_SUBTRACT => {
            return Err((
                errors::INVALID_CONFIG,
                Some(format!(
                    "{key} is not a list config: APPEND and SUBTRACT apply to lists only"
                )),
            ))
        }
        other => {
            return Err((
                errors::INVALID_REQUEST,
                Some(format!("unknown config operation {other} on {key}")),
            ))
        }
    }
    Ok(())
}

/// Whether `key` is a topic config ringmq applies; INVALID_CONFIG saying why not otherwise.
fn alterable(key: &str) -> Result<(), Outcome> {
    if ALTERABLE_TOPIC_CONFIGS.contains(&key) {
        return Ok(());
    }
    let why = if default_topic_configs().contains_key(key) {
        format!("ringmq does not apply {key}, so it cannot be changed")
    } else {
        format!("unknown topic config {key}")
    };
    Err((
        errors::INVALID_CONFIG,
        Some(format!(
            "{why} (alterable: {})",
            ALTERABLE_TOPIC_CONFIGS.join(", ")
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{new_topic_id, Place, TopicMeta};
    use crate::versions::advertised;
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::{Decodable, Encodable};

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Topics "a" (retention.ms=60000 and a key ringmq does not apply) and "b" (none).
    fn snapshot() -> Snapshot {
        let mut snap = Snapshot::new(2);
        for (name, explicit) in [
            (
                "a",
                configs(&[("retention.ms", "60000"), ("segment.ms", "5")]),
            ),
            ("b", BTreeMap::new()),
        ] {
            snap.apply(&MetaEvent::TopicCreated {
                topic: TopicMeta {
                    name: name.into(),
                    id: new_topic_id(),
                    partitions: vec![Place { core: 1, queue: 0 }],
                    configs: explicit,
                },
            })
            .unwrap();
        }
        snap
    }

    fn replace(pairs: &[(&str, Option<&str>)]) -> Edit {
        Edit::Replace(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        )
    }

    fn ops(list: &[(&str, i8, Option<&str>)]) -> Edit {
        Edit::Incremental(
            list.iter()
                .map(|(k, op, v)| (k.to_string(), *op, v.map(str::to_string)))
                .collect(),
        )
    }

    /// The state after planning `asks` and applying the events, and the answers.
    fn run(asks: &[(&str, Edit)], validate_only: bool) -> (Snapshot, Vec<MetaEvent>, Vec<i16>) {
        let mut snap = snapshot();
        let asks: Vec<(String, Edit)> = asks
            .iter()
            .map(|(n, e)| (n.to_string(), e.clone()))
            .collect();
        let (events, outcomes) = plan(&snap, &asks, validate_only);
        for ev in &events {
            snap.apply(ev).unwrap();
        }
        let codes = outcomes.iter().map(|(code, _)| *code).collect();
        (snap, events, codes)
    }

    fn explicit(snap: &Snapshot, topic: &str) -> BTreeMap<String, String> {
        snap.topic(topic).unwrap().configs.clone()
    }

    /// Catches AlterConfigs merging into the old set instead of replacing it (Kafka reverts the
    /// keys not given), and null values stored as empty strings.
    #[test]
    fn alter_configs_replaces_the_whole_explicit_set() {
        let edit = replace(&[("retention.bytes", Some("1000")), ("retention.ms", None)]);
        let (snap, events, codes) = run(&[("a", edit)], false);
        assert_eq!(codes, vec![errors::NONE]);
        assert_eq!(events.len(), 1);
        assert_eq!(
            explicit(&snap, "a"),
            configs(&[("retention.bytes", "1000")])
        );
        assert!(explicit(&snap, "b").is_empty(), "another topic changed");
    }

    /// Catches SET that replaces the set (drops other keys), DELETE that does not revert, and a
    /// DELETE refused for a key ringmq stores but does not apply.
    #[test]
    fn incremental_set_and_delete_edit_the_set() {
        let edit = ops(&[
            ("retention.bytes", OP_SET, Some("2048")),
            ("segment.ms", OP_DELETE, None),
            ("never.set", OP_DELETE, None),
        ]);
        let (snap, _, codes) = run(&[("a", edit)], false);
        assert_eq!(codes, vec![errors::NONE]);
        assert_eq!(
            explicit(&snap, "a"),
            configs(&[("retention.bytes", "2048"), ("retention.ms", "60000")])
        );
        let (snap, _, codes) = run(&[("a", ops(&[("retention.ms", OP_DELETE, None)]))], false);
        assert_eq!(codes, vec![errors::NONE]);
        assert_eq!(explicit(&snap, "a"), configs(&[("segment.ms", "5")]));
    }

    /// Catches a refusal that still changes the topic, one bad resource failing the others,
    /// and an unchanged set logged again.
    #[test]
    fn refusals_change_nothing_and_stand_alone() {
        let cases: Vec<(Edit, i16)> = vec![
            (
                ops(&[("retention.ms", OP_SET, Some("soon"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("retention.ms", OP_SET, Some("-2"))]),
                errors::INVALID_CONFIG,
            ),
            (
                replace(&[("retention.bytes", Some("1.5"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("message.timestamp.type", OP_SET, Some("Now"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("cleanup.policy", OP_SET, Some("compact"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("no.such.key", OP_SET, Some("1"))]),
                errors::INVALID_CONFIG,
            ),
            (
                replace(&[("no.such.key", Some("1"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("retention.ms", OP_APPEND, Some("1"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("retention.ms", OP_SUBTRACT, Some("1"))]),
                errors::INVALID_CONFIG,
            ),
            (
                ops(&[("retention.ms", 9, Some("1"))]),
                errors::INVALID_REQUEST,
            ),
            (
                ops(&[("retention.ms", OP_SET, None)]),
                errors::INVALID_REQUEST,
            ),
            (
                ops(&[
                    ("retention.ms", OP_SET, Some("1")),
                    ("retention.ms", OP_DELETE, None),
                ]),
                errors::INVALID_REQUEST,
            ),
        ];
        for (edit, code) in cases {
            let good = ops(&[("retention.ms", OP_SET, Some("5"))]);
            let (snap, events, codes) = run(&[("a", edit.clone()), ("b", good)], false);
            assert_eq!(codes, vec![code, errors::NONE], "{edit:?}");
            assert_eq!(events.len(), 1, "{edit:?}");
            assert_eq!(
                explicit(&snap, "a"),
                configs(&[("retention.ms", "60000"), ("segment.ms", "5")]),
                "{edit:?}"
            );
            assert_eq!(explicit(&snap, "b"), configs(&[("retention.ms", "5")]));
        }
        let same = ops(&[("retention.ms", OP_SET, Some("60000"))]);
        let (_, events, codes) = run(&[("a", same)], false);
        assert_eq!((codes, events.len()), (vec![errors::NONE], 0));
    }

    /// Catches validate_only that changes the topic, or that skips the validation.
    #[test]
    fn validate_only_validates_and_changes_nothing() {
        let good = ops(&[("retention.ms", OP_SET, Some("5"))]);
        let bad = ops(&[("retention.ms", OP_SET, Some("soon"))]);
        let (snap, events, codes) = run(&[("a", good), ("b", bad), ("c", replace(&[]))], true);
        assert_eq!(
            codes,
            vec![
                errors::NONE,
                errors::INVALID_CONFIG,
                errors::UNKNOWN_TOPIC_OR_PARTITION
            ]
        );
        assert!(events.is_empty());
        assert_eq!(explicit(&snap, "a"), snapshot().topic("a").unwrap().configs);
    }

    /// Catches a broker resource (or a resource named twice) sent to the topic planner, where
    /// it would answer UNKNOWN_TOPIC_OR_PARTITION or change a topic named like the broker.
    #[test]
    fn brokers_other_types_and_duplicates_are_answered_without_metadata() {
        let ask = |resource_type: i8, name: &str| Ask {
            resource_type,
            name: name.into(),
            edit: replace(&[]),
        };
        let answers = not_for_topics(&[
            ask(RESOURCE_TOPIC, "a"),
            ask(RESOURCE_BROKER, "0"),
            ask(RESOURCE_BROKER, ""),
            ask(8, "0"),
            ask(RESOURCE_TOPIC, "twice"),
            ask(RESOURCE_TOPIC, "twice"),
            ask(RESOURCE_BROKER, "a"),
        ]);
        let codes: Vec<Option<i16>> = answers.iter().map(|a| a.as_ref().map(|o| o.0)).collect();
        let refused = Some(errors::INVALID_REQUEST);
        assert_eq!(
            codes,
            vec![None, refused, refused, refused, refused, refused, refused]
        );
        assert!(
            answers[1].as_ref().unwrap().1.is_some(),
            "a message says why"
        );
    }

    /// Catches a value CreateTopics accepts that an alter refuses, or the reverse: both call the
    /// one validation.
    #[test]
    fn values_are_checked_like_create_topics_checks_them() {
        assert!(validate_topic_configs(&configs(&[
            ("retention.ms", "-1"),
            ("retention.bytes", "0"),
            ("message.timestamp.type", "LogAppendTime"),
            ("segment.ms", "anything: not applied, not checked"),
        ]))
        .is_ok());
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.bytes", "-2"),
            ("message.timestamp.type", "logappendtime"),
        ] {
            assert!(
                validate_topic_configs(&configs(&[(k, v)])).is_err(),
                "{k}={v}"
            );
        }
    }

    /// Catches a frame of either API that the broker's decoder refuses (not advertised, not
    /// dispatched): the connection would be closed on the client's first alter.
    #[test]
    fn the_decoder_serves_both_apis_at_their_newest_versions() {
        use crate::decode::{decode_request, Request};
        use ringmq_wire::frame::{encode_request, strip_size};
        let mut f = encode_request(7, "t", 2, &AlterConfigsRequest::default())
            .unwrap()
            .freeze();
        strip_size(&mut f);
        let d = decode_request(f).unwrap();
        assert!(matches!(d.body, Request::AlterConfigs(_)));
        let mut f = encode_request(8, "t", 1, &IncrementalAlterConfigsRequest::default())
            .unwrap()
            .freeze();
        strip_size(&mut f);
        let d = decode_request(f).unwrap();
        assert!(matches!(d.body, Request::IncrementalAlterConfigs(_)));
    }

    /// Catches a request the codec cannot decode or a response field set in a version that
    /// lacks it (the codec then refuses to encode and the connection is closed), for every
    /// advertised version of both APIs.
    #[test]
    fn requests_and_responses_round_trip_in_every_advertised_version() {
        let (min, max) = advertised(ApiKey::AlterConfigs).expect("AlterConfigs advertised");
        assert_eq!((min, max), (0, 2));
        for v in min..=max {
            let req = AlterConfigsRequest::default()
                .with_resources(vec![AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_static_str("a"))
                    .with_configs(vec![AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("5")))])])
                .with_validate_only(true);
            let mut buf = bytes::BytesMut::new();
            req.encode(&mut buf, v).unwrap();
            let back = AlterConfigsRequest::decode(&mut buf.freeze(), v).unwrap();
            assert_eq!(back, req, "v{v}");
            let resp = AlterConfigsResponse::default().with_responses(vec![
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(errors::INVALID_CONFIG)
                    .with_error_message(Some(StrBytes::from_static_str("why")))
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_static_str("a")),
            ]);
            let mut buf = bytes::BytesMut::new();
            resp.encode(&mut buf, v).unwrap();
            assert_eq!(
                AlterConfigsResponse::decode(&mut buf.freeze(), v).unwrap(),
                resp
            );
        }
        let (min, max) = advertised(ApiKey::IncrementalAlterConfigs).expect("advertised");
        assert_eq!((min, max), (0, 1));
        for v in min..=max {
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental::AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_static_str("a"))
                    .with_configs(vec![incremental::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_config_operation(OP_DELETE)
                        .with_value(None)]),
            ]);
            let mut buf = bytes::BytesMut::new();
            req.encode(&mut buf, v).unwrap();
            let back = IncrementalAlterConfigsRequest::decode(&mut buf.freeze(), v).unwrap();
            assert_eq!(back, req, "v{v}");
            let resp = IncrementalAlterConfigsResponse::default().with_responses(vec![
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_error_code(errors::INVALID_REQUEST)
                    .with_error_message(None)
                    .with_resource_type(RESOURCE_BROKER)
                    .with_resource_name(StrBytes::from_static_str("0")),
            ]);
            let mut buf = bytes::BytesMut::new();
            resp.encode(&mut buf, v).unwrap();
            assert_eq!(
                IncrementalAlterConfigsResponse::decode(&mut buf.freeze(), v).unwrap(),
                resp
            );
        }
    }
}
