//! Compilation: chain files (already parsed into spanned trees) become a [`RuleSet`] of runnable
//! chains. Every expression and template is compiled here, once; durations, severities and
//! references are checked; the graph is checked for unknown and duplicate ids, cycles,
//! unreachable nodes and ambiguous fall-through. Every problem is reported with its position and
//! compilation carries on, so one run shows them all.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rhai::Engine;

use super::builder::Builder;
use super::model::ChainFile;
use crate::config::Config;
use crate::diag::{Diagnostics, Source};
use crate::engine::program::NodeKind;
use crate::engine::program::{CNode, Chain, OnFilter, Reads, RuleSet};
use crate::engine::{ChannelTemplates, NodeConfig};
use crate::message::Kind;
use crate::rules::nodes::{KindSpec, NodeSpec};
use crate::script::Template;
use crate::topic;
use crate::yaml::{self, Node, Pos, Sp};

/// Warns of a `publish` whose topic comes back in as a message this chain takes: the chain
/// would run on its own output, message after message (83,000 in 5 s, seen). A template's
/// holes are taken as any one level, so `device/${meta.device}/telemetry` counts.
fn warn_self_feeding(
    src: &Source,
    on: Option<&crate::rules::model::OnSpec>,
    specs: &[Option<NodeSpec>],
    patterns: &[crate::topic::TopicPattern],
    diags: &mut Diagnostics,
) {
    let kind = on
        .and_then(|o| o.kind.as_ref())
        .map_or(Kind::default(), |k| k.value);
    let filter = on.and_then(|o| o.topic.as_ref());
    let publishes = specs.iter().flatten().filter_map(|s| match &s.body {
        Some(KindSpec::Publish(p)) => p.publish.as_ref(),
        _ => None,
    });
    for p in publishes {
        let sample = hole_free(&p.topic.value);
        let Some(m) = patterns.iter().find_map(|pat| pat.matches(&sample)) else {
            continue;
        };
        if m.kind != kind || filter.is_some_and(|f| !crate::topic::filter_matches(f, &sample)) {
            continue;
        }
        diags
            .warning(
                src,
                p.topic.pos,
                format!(
                    "`publish` to `{}` feeds this chain's own input (a {} message): it would run on its own output again and again",
                    p.topic.value,
                    kind.as_str()
                ),
            )
            .hint("publish to a topic no pattern reads as this chain's input, or narrow `on:` (its `topic:` or `kind:`)");
    }
}

/// A topic template with each `${…}` hole as one ordinary level text.
fn hole_free(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        match rest[i..].find('}') {
            Some(j) => {
                out.push('x');
                rest = &rest[i + j + 1..];
            }
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One chain file, parsed.
pub struct ChainDoc {
    /// The file.
    pub src: Source,
    /// Its tree.
    pub root: Node,
}

/// What compiling needs from the config.
pub struct CompileOptions<'a> {
    /// The config, if one was given.
    pub config: Option<&'a Config>,
}

/// Compiles chain documents into a rule set. Problems go to `diags`; the rule set holds every
/// chain that compiled cleanly (callers refuse to run when `diags` has errors).
pub fn compile(docs: &[ChainDoc], opts: &CompileOptions, diags: &mut Diagnostics) -> RuleSet {
    let engine = Arc::new(crate::script::new_engine());
    let channel_names: Option<BTreeSet<String>> =
        opts.config.map(|c| c.channels.keys().cloned().collect());
    // The topic patterns in force (the config's, or the embedded default's): what a publish
    // turns back into an input message.
    let patterns: Vec<crate::topic::TopicPattern> = opts
        .config
        .map_or_else(
            || Config::default().topic_patterns(),
            Config::topic_patterns,
        )
        .into_iter()
        .filter_map(|(p, k)| crate::topic::TopicPattern::parse(&p, k).ok())
        .collect();
    let mut chains: Vec<Chain> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut slot = 0;
    for doc in docs {
        if let Some(mut chain) =
            compile_chain(doc, &engine, channel_names.as_ref(), &patterns, diags)
        {
            if let Some(first) = names.get(chain.name.as_ref()) {
                let pos = doc.root.get("chain").map_or(Pos::default(), |n| n.pos);
                diags
                    .error(
                        &doc.src,
                        pos,
                        format!("duplicate chain name `{}`", chain.name),
                    )
                    .hint(format!(
                        "`{first}` already defines it; chain names are unique"
                    ));
                continue;
            }
            names.insert(chain.name.to_string(), chain.path.clone());
            chain.first_slot = slot;
            slot += chain.nodes.len();
            chains.push(chain);
        }
    }
    let mut channels = HashMap::new();
    if let Some(cfg) = opts.config {
        for (name, spec) in &cfg.channels {
            // Config templates are checked by the config loader; compile quietly here.
            let t = |s: &Option<Sp<String>>| {
                s.as_ref().and_then(|s| Template::compile(&engine, s).ok())
            };
            channels.insert(
                name.clone(),
                ChannelTemplates {
                    subject: t(&spec.subject),
                    body: t(&spec.body),
                    body_json: spec
                        .body_json
                        .as_ref()
                        .and_then(|j| crate::script::JsonTemplate::compile(&engine, &j.value).ok()),
                },
            );
        }
    }
    RuleSet {
        engine,
        chains,
        config: NodeConfig {
            channels,
            command_topic: opts
                .config
                .and_then(|c| c.command_topic.as_ref().map(|t| t.value.clone())),
        },
    }
}

/// Reports a deserialization error of a subtree.
pub fn report_de(diags: &mut Diagnostics, src: &Source, e: yaml::DeError, fallback: Pos) {
    let d = diags.error(src, e.pos.unwrap_or(fallback), e.message);
    if let Some(h) = e.hint {
        d.hint(h);
    }
}

struct Edge {
    to: usize,
    pos: Pos,
    branch: bool,
}

fn compile_chain(
    doc: &ChainDoc,
    engine: &Arc<Engine>,
    channels: Option<&BTreeSet<String>>,
    patterns: &[crate::topic::TopicPattern],
    diags: &mut Diagnostics,
) -> Option<Chain> {
    let src = &doc.src;
    // Every problem of the header at once; what reads is kept (a broken `on.kind` leaves
    // `on.when` to be compiled and checked).
    let header: ChainFile =
        yaml::from_node_every(&doc.root, |e| report_de(diags, src, e, doc.root.pos))
            // Keep going: the nodes, and `on` (its problems reported above), may have problems of
            // their own worth reporting.
            .unwrap_or_else(|| ChainFile {
                chain: Sp::unplaced(String::new()),
                description: None,
                on: doc
                    .root
                    .get("on")
                    .and_then(|on| yaml::from_node_every(on, |_| {})),
                nodes: serde::de::IgnoredAny,
            });
    let before = diags.error_count();
    if header.chain.pos != Pos::default() && header.chain.trim().is_empty() {
        diags.error(src, header.chain.pos, "the chain name is empty");
    }

    // Nodes, each deserialized on its own.
    let node_list: &[Node] = match doc.root.get("nodes").map(|n| &n.value) {
        Some(yaml::Yaml::Seq(items)) => items,
        Some(_) => {
            let n = doc.root.get("nodes").expect("present");
            diags.error(
                src,
                n.pos,
                format!("`nodes` must be a list of nodes, found {}", n.type_name()),
            );
            &[]
        }
        // Reported by the header: "missing key `nodes`".
        None => &[],
    };
    let mut specs: Vec<Option<NodeSpec>> = Vec::new();
    for n in node_list {
        match crate::rules::nodes::load(n) {
            Ok(s) => specs.push(Some(s)),
            Err(errors) => {
                for e in errors {
                    report_de(diags, src, e, n.pos);
                }
                specs.push(None);
            }
        }
    }
    warn_self_feeding(src, header.on.as_ref(), &specs, patterns, diags);

    // Ids: given, or `<kind>-<n>`. A node that failed to load still reserves its id, so that
    // references to it do not add a second, misleading error.
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut id_list: Vec<Arc<str>> = Vec::new();
    let mut kinds: Vec<Option<NodeKind>> = Vec::new();
    for (i, (spec, raw)) in specs.iter().zip(node_list).enumerate() {
        let kind = match spec {
            Some(s) => match s.kinds.as_slice() {
                [(one, _)] => Some(*one),
                [] => {
                    let all: Vec<&str> = NodeKind::ALL.iter().map(|k| k.name()).collect();
                    diags
                        .error(src, raw.pos, "the node has no kind key")
                        .hint(format!("add one of: {}", all.join(", ")));
                    None
                }
                [(first, _), (second, pos), ..] => {
                    diags
                        .error(
                            src,
                            *pos,
                            format!("the node has two kind keys, `{first}` and `{second}`"),
                        )
                        .hint("one node does one thing: split it in two nodes");
                    Some(*first)
                }
            },
            None => None,
        };
        kinds.push(kind);
        let id_node = raw.get("id");
        let id = match id_node.and_then(Node::as_str) {
            Some(id) => id.to_string(),
            None => format!("{}-{}", kind.map_or("node", NodeKind::name), i + 1),
        };
        if let Some(first) = ids.get(&id) {
            let pos = id_node.map_or(raw.pos, |n| n.pos);
            diags
                .error(src, pos, format!("duplicate node id `{id}`"))
                .hint(format!(
                    "the node at line {} has it already; ids are unique in a chain",
                    node_list[*first].pos.line
                ));
        } else {
            ids.insert(id.clone(), i);
        }
        id_list.push(id.into());
    }

    // Each node: kind-specific compile, shared keys, edges.
    let mut b = Builder {
        engine,
        src,
        diags,
        ids: &ids,
        channels,
        failed: false,
        reads: Reads::default(),
        edges: Vec::new(),
    };
    let mut nodes: Vec<Option<CNode>> = Vec::new();
    let mut edges: Vec<Vec<Edge>> = Vec::new();
    let mut explicit_next: Vec<bool> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut out = Vec::new();
        let Some(spec) = spec else {
            // It failed to load: assume it falls through, so that the nodes after it are not
            // also reported as unreachable.
            if i + 1 < specs.len() {
                out.push(Edge {
                    to: i + 1,
                    pos: Pos::default(),
                    branch: false,
                });
            }
            nodes.push(None);
            edges.push(out);
            explicit_next.push(false);
            continue;
        };
        let kind = kinds[i];
        for (key, pos) in &spec.stray {
            let names: Vec<&str> = NodeKind::ALL
                .iter()
                .filter(|k| crate::rules::nodes::owns(**k).contains(key))
                .map(|k| k.name())
                .collect();
            let kind = kind.map_or("node", NodeKind::name);
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            b.error(
                *pos,
                format!("`{key}` does not apply to {article} {kind} node"),
            )
            .hint(format!("`{key}` belongs to: {}", names.join(", ")));
        }
        let head = &spec.head;
        let next = match &head.next {
            Some(n) => {
                let mut v = Vec::new();
                for id in &n.0 {
                    let id = if id.pos == Pos::default() {
                        Sp {
                            value: id.value.clone(),
                            pos: n.pos,
                        }
                    } else {
                        id.clone()
                    };
                    if let Some(t) = b.target(&id) {
                        out.push(Edge {
                            to: t,
                            pos: id.pos,
                            branch: false,
                        });
                        v.push(t);
                    }
                }
                v
            }
            // A switch never falls through: no match and no `default` stops the message.
            None if i + 1 < specs.len() && kind.is_none_or(NodeKind::falls_through) => {
                out.push(Edge {
                    to: i + 1,
                    pos: Pos::default(),
                    branch: false,
                });
                vec![i + 1]
            }
            None => Vec::new(),
        };
        explicit_next.push(head.next.is_some());
        let else_ = spec.else_.as_ref().and_then(|e| {
            let t = b.target(e)?;
            out.push(Edge {
                to: t,
                pos: e.pos,
                branch: true,
            });
            Some(t)
        });
        let on_error = head.on_error.as_ref().and_then(|e| {
            let t = b.target(e)?;
            out.push(Edge {
                to: t,
                pos: e.pos,
                branch: true,
            });
            Some(t)
        });
        b.failed = false;
        let imp = spec
            .body
            .as_ref()
            .and_then(|body| crate::rules::nodes::build(body, head, &mut b));
        out.extend(b.edges.drain(..).map(|(to, pos)| Edge {
            to,
            pos,
            branch: true,
        }));
        let ok = !b.failed;
        edges.push(out);
        nodes.push(match (imp, kind, ok) {
            (Some(imp), Some(kind), true) => Some(CNode {
                id: id_list[i].clone(),
                kind,
                next,
                else_,
                on_error,
                imp,
            }),
            _ => None,
        });
    }

    // on:
    let on = compile_on(&header, &mut b);

    let node_pos: Vec<Pos> = node_list.iter().map(|n| n.pos).collect();
    check_graph(src, &id_list, &node_pos, &edges, &explicit_next, b.diags);

    if b.diags.error_count() > before || nodes.iter().any(Option::is_none) {
        return None;
    }
    Some(Chain {
        name: header.chain.value.as_str().into(),
        path: src.display(),
        on: on?,
        nodes: nodes.into_iter().flatten().collect(),
        first_slot: 0,
        reads: b.reads,
    })
}

fn compile_on(header: &ChainFile, b: &mut Builder) -> Option<OnFilter> {
    let Some(on) = &header.on else {
        return Some(OnFilter::default());
    };
    if let Some(t) = &on.topic {
        if let Err(e) = topic::check_filter(t) {
            b.error(t.pos, format!("bad topic filter: {e}"));
        }
    }
    let when = b.opt_expr(&on.when)?;
    Some(OnFilter {
        kind: on.kind.as_ref().map_or(Kind::Telemetry, |k| k.value),
        device_types: on.device_type.as_ref().map_or(Vec::new(), |d| {
            d.0.iter().map(|s| s.value.clone()).collect()
        }),
        topic: on.topic.as_ref().map(|t| t.value.clone()),
        when,
    })
}

fn check_graph(
    src: &Source,
    ids: &[Arc<str>],
    node_pos: &[Pos],
    edges: &[Vec<Edge>],
    explicit_next: &[bool],
    diags: &mut Diagnostics,
) {
    let n = ids.len();
    // Cycles: depth-first from every node; an edge to a node on the stack closes a cycle and is
    // reported at that edge.
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut reported = std::collections::HashSet::new();
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (v, ref mut ei)) = stack.last_mut() {
            if let Some(e) = edges[v].get(*ei) {
                *ei += 1;
                match state[e.to] {
                    0 => {
                        state[e.to] = 1;
                        stack.push((e.to, 0));
                    }
                    1 if reported.insert((v, e.to)) => {
                        let from = stack.iter().position(|(x, _)| *x == e.to).unwrap_or(0);
                        let path: Vec<&str> = stack[from..]
                            .iter()
                            .map(|(x, _)| ids[*x].as_ref())
                            .chain([ids[e.to].as_ref()])
                            .collect();
                        let pos = if e.pos == Pos::default() {
                            Pos {
                                line: 1,
                                col: 1,
                                offset: 0,
                            }
                        } else {
                            e.pos
                        };
                        diags
                            .error(src, pos, format!("cycle: {}", path.join(" → ")))
                            .hint("chains are acyclic: end a branch with `next: []`");
                    }
                    _ => {}
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }
    // Unreachable nodes.
    let mut seen = vec![false; n];
    let mut todo = vec![0usize];
    while let Some(v) = todo.pop() {
        if v < n && !seen[v] {
            seen[v] = true;
            todo.extend(edges[v].iter().map(|e| e.to));
        }
    }
    for i in 0..n {
        if !seen[i] {
            diags
                .warning(src, node_pos[i], format!("node `{}` is unreachable", ids[i]))
                .hint("no node leads here: reference it from `next`, `else`, `on_error` or a switch, or remove it");
        }
    }
    // Fall-through into a branch target.
    for i in 1..n {
        let falls = !explicit_next[i - 1] && edges[i - 1].iter().any(|e| e.to == i && !e.branch);
        let branch = edges.iter().flatten().any(|e| e.to == i && e.branch);
        if falls && branch {
            let warn = format!(
                "node `{}` is entered by fall-through from `{}` and as a branch target; add `next: []` to `{}` if the branch is meant to stand alone",
                ids[i], ids[i - 1], ids[i - 1]
            );
            diags.warning(src, node_pos[i], warn);
        }
    }
}
