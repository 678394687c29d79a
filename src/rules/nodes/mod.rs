//! Every node kind of the rule language, one file each, with the same shape: its YAML keys
//! (`KEYS` and `Spec`, whose doc comments are the schema's descriptions), the compile step
//! (`build`, from the node's keys through a [`Builder`] that reports problems with positions)
//! and the run step (a [`NodeImpl`]).
//!
//! A node is one flat map, as users write it (`filter:` next to `for:` and `else:`). [`load`]
//! splits it: the keys every node may hold ([`NodeHead`]), the kind keys it holds, and the keys
//! of its kind, which that kind's file reads into its own `Spec`. Adding a kind is its file, a
//! [`NodeKind`] variant, and its line in the `kinds!` list below.

use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::engine::program::NodeKind;
use crate::engine::NodeImpl;
use crate::rules::builder::Builder;
use crate::yaml::{did_you_mean, from_node, DeError, Node, Pos, Sp, Yaml};
use common::{Keys, NodeHead};

pub mod common;

/// Declares the kinds: their modules, the enum of their specs, and the tables that reach each
/// kind's file. A [`NodeKind`] without its line here does not compile.
macro_rules! kinds {
    ($($kind:ident => $m:ident),* $(,)?) => {
        $(pub mod $m;)*

        /// A node's own keys, read by its kind's file.
        #[derive(Debug, Clone)]
        pub enum KindSpec {
            $(
                #[allow(missing_docs)]
                $kind($m::Spec),
            )*
        }

        fn read(kind: NodeKind, body: &Node) -> Result<KindSpec, DeError> {
            Ok(match kind {
                $(NodeKind::$kind => KindSpec::$kind(from_node(body)?),)*
            })
        }

        /// Compiles a node from its kind's keys and the shared ones. Returns `None` when it has
        /// errors (already reported).
        pub fn build(spec: &KindSpec, head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
            match spec {
                $(KindSpec::$kind(s) => $m::build(s, head, b),)*
            }
        }

        /// The keys that are `kind`'s, as its file declares them.
        pub fn keys(kind: NodeKind) -> &'static Keys {
            match kind {
                $(NodeKind::$kind => &$m::KEYS,)*
            }
        }

        fn kind_schemas(g: &mut SchemaGenerator) -> Vec<Schema> {
            vec![$(<$m::Spec as JsonSchema>::json_schema(g),)*]
        }
    };
}

kinds! {
    Filter => filter,
    Transform => transform,
    Switch => switch,
    Debounce => debounce,
    Delay => delay,
    Throttle => throttle,
    Deadband => deadband,
    Aggregate => aggregate,
    Anomaly => anomaly,
    Alarm => alarm,
    Rpc => rpc,
    Influx => influx,
    Websocket => websocket,
    Notify => notify,
    Publish => publish,
    Log => log,
}

/// The keys of a node that belong to its kind besides its kind keys (`for` and `else` to a
/// filter, `key` to the kinds with per-key state).
pub fn owns(kind: NodeKind) -> &'static [&'static str] {
    keys(kind).owns
}

/// One node of a chain, split as [`load`] reads it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The keys every node may hold.
    pub head: NodeHead,
    /// The kinds whose kind keys the node holds, with the position of each (exactly one is
    /// valid), in [`NodeKind::ALL`] order.
    pub kinds: Vec<(NodeKind, Pos)>,
    /// The first kind's own keys, as its file reads them (`None` when it holds no kind key).
    pub body: Option<KindSpec>,
    /// Keys it holds that another kind owns (`for` on an alarm), with their value's position.
    pub stray: Vec<(&'static str, Pos)>,
    /// Where a message the node routes aside goes (`else:` of the kinds that own it: a false
    /// filter, a normal value of `anomaly`).
    pub else_: Option<Sp<String>>,
}

impl NodeSpec {
    /// The node's kind: the first of its kind keys.
    pub fn kind(&self) -> Option<NodeKind> {
        self.kinds.first().map(|(k, _)| *k)
    }
}

/// Every key a node may hold, in the order hints list them: the shared keys, then each kind's
/// (in [`NodeKind::ALL`] order).
fn all_keys() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = NodeHead::KEYS.to_vec();
    for k in NodeKind::ALL {
        let keys = keys(k);
        for key in keys.triggers.iter().chain(keys.owns) {
            if !all.contains(key) {
                all.push(key);
            }
        }
    }
    all
}

/// Reads one node of a chain's `nodes:` list. Every problem is returned (an unknown key, a
/// wrong value under a shared key and one under a kind's key all show at once).
pub fn load(node: &Node) -> Result<NodeSpec, Vec<DeError>> {
    let Yaml::Map(entries) = &node.value else {
        return Err(vec![DeError {
            message: format!(
                "a node is a map of keys (`filter: …`, `id: …`), found {}",
                node.type_name()
            ),
            pos: Some(node.pos),
            hint: None,
        }]);
    };
    let key_of = |k: &Node| {
        k.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| k.scalar_text())
    };
    let mut kinds: Vec<(NodeKind, Pos)> = Vec::new();
    for kind in NodeKind::ALL {
        let pos = entries
            .iter()
            .find(|(k, _)| keys(kind).triggers.contains(&key_of(k).as_str()))
            .map(|(_, v)| v.pos);
        if let Some(pos) = pos {
            kinds.push((kind, pos));
        }
    }
    let kind = kinds.first().map(|(k, _)| *k);
    let mine = |key: &str| {
        kind.is_some_and(|k| keys(k).triggers.contains(&key) || keys(k).owns.contains(&key))
    };
    let mut errors = Vec::new();
    let (mut head, mut body, mut stray) = (Vec::new(), Vec::new(), Vec::new());
    let all = all_keys();
    for (k, v) in entries {
        let key = key_of(k);
        let known = all.iter().find(|a| **a == key).copied();
        let owned = NodeKind::ALL
            .iter()
            .any(|o| owns(*o).contains(&key.as_str()));
        match known {
            None => errors.push(DeError {
                message: format!("unknown key `{key}`"),
                pos: Some(k.pos),
                hint: Some(
                    did_you_mean(&key, all.iter().copied())
                        .unwrap_or_else(|| format!("expected one of: {}", all.join(", "))),
                ),
            }),
            Some(name) => {
                if NodeHead::KEYS.contains(&name) {
                    head.push((k.clone(), v.clone()));
                    if owned && !mine(name) {
                        stray.push((name, v.pos));
                    }
                } else if mine(name) {
                    body.push((k.clone(), v.clone()));
                } else if owned {
                    stray.push((name, v.pos));
                }
                // Else another kind's kind key: reported as a second kind key.
            }
        }
    }
    let map = |entries| Node {
        value: Yaml::Map(entries),
        pos: node.pos,
    };
    let else_ = body
        .iter()
        .find(|(k, _)| k.as_str() == Some("else"))
        .and_then(|(_, v)| from_node::<Sp<String>>(v).map_err(|e| errors.push(e)).ok());
    let head = from_node::<NodeHead>(&map(head))
        .map_err(|e| errors.push(e))
        .ok();
    let body = match kind {
        Some(kind) => read(kind, &map(body)).map_err(|e| errors.push(e)).ok(),
        None => None,
    };
    // `else` is read twice (for the graph, and by its kind's Spec): one error each is enough.
    let mut seen = Vec::new();
    errors.retain(|e| {
        let new = !seen.contains(e);
        seen.push(e.clone());
        new
    });
    match head {
        Some(head) if errors.is_empty() => Ok(NodeSpec {
            head,
            kinds,
            body,
            stray,
            else_,
        }),
        _ => Err(errors),
    }
}

/// The schema of a node: the shared keys and every kind's, in one flat map.
pub struct NodeSchema;

impl JsonSchema for NodeSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NodeSpec".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let mut props = serde_json::Map::new();
        let parts = std::iter::once(NodeHead::json_schema(g)).chain(kind_schemas(g));
        for part in parts {
            if let Some(p) = part.get("properties").and_then(|p| p.as_object()) {
                for (k, v) in p {
                    props.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        schemars::json_schema!({
            "description": "One node of a chain. It holds exactly one kind key (`filter`, `transform`, `alarm`, …) and\nthe keys that go with it.",
            "type": "object",
            "properties": props,
            "additionalProperties": false,
        })
    }
}
