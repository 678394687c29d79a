//! `alarm`: raises or clears the one alarm per (device, type). Only transitions pass on, as the
//! message with `msg.alarm` set, so a following `notify` fires once per transition; and of
//! those only the ones its `pass` lists (a raise: `created`; a clear: `cleared`), so that a
//! command after a raise is sent when the alarm is created, not again when its severity
//! changes or an operator acknowledges it.

use crate::rules::syntax::ExprSrc;
use crate::yaml::Sp;
use crate::yaml::SpMap;
use rhai::{Dynamic, Map};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::alarm::{Alarm, Transition, SEVERITIES};
use crate::engine::effect::Event;
use crate::engine::{Cx, Flow, NodeImpl, Packet, Why};
use super::common::{Keys, NodeHead};
use crate::rules::builder::Builder;
use crate::script::{Expr, Template};

enum Severity {
    Fixed(crate::alarm::Severity),
    Expr(Expr),
}

struct AlarmNode {
    type_: Template,
    action: AlarmAction,
    severity: Severity,
    message: Option<Template>,
    details: Vec<(String, Expr)>,
    /// The transitions that go on to the next nodes.
    pass: Vec<Transition>,
}

/// The keys of a node that are this kind's: the kind key(s), and the keys it owns besides
/// (another kind's node holding one of those is an error).
pub(super) const KEYS: Keys = Keys {
    triggers: &["alarm"],
    owns: &[],
};

/// This kind's keys in a node: its kind key and the keys it owns (`key` is read from the
/// node's shared keys).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// alarm: raise or clear the one alarm per (device, type).
    #[serde(default)]
    pub alarm: Option<Sp<AlarmSpec>>,
}

pub(super) fn build(spec: &Spec, _head: &NodeHead, b: &mut Builder) -> Option<Box<dyn NodeImpl>> {
    let a = spec.alarm.as_ref()?;
    let type_ = b.template(&a.type_);
    let action = a.action.as_ref().map_or(AlarmAction::Raise, |x| x.value);
    let sev = match &a.severity {
        None => Some(Severity::Fixed(crate::alarm::Severity::Warning)),
        Some(s) => match crate::alarm::Severity::parse(&s.text) {
            Some(name) => Some(Severity::Fixed(name)),
            None if s.text.chars().all(|c| c.is_ascii_alphabetic())
                && s.text.to_uppercase() == s.text =>
            {
                b.error(s.pos, format!("unknown severity `{}`", s.text))
                    .hint(format!(
                        "one of {}, or a Rhai expression giving one",
                        SEVERITIES.join(", ")
                    ));
                None
            }
            None => match crate::alarm::Severity::parse(&s.text.to_uppercase()) {
                Some(name) => {
                    b.error(s.pos, format!("unknown severity `{}`", s.text))
                        .hint(format!("did you mean `{name}`?"));
                    None
                }
                None => b.expr(s).map(Severity::Expr),
            },
        },
    };
    let message = b.opt_template(&a.message);
    let mut details = Vec::new();
    let mut ok = true;
    for (k, e) in a.details.iter().flat_map(|d| d.value.0.iter()) {
        match b.expr(e) {
            Some(x) => details.push((k.value.clone(), x)),
            None => ok = false,
        }
    }
    if action == AlarmAction::Clear && a.severity.is_some() {
        b.error(
            a.severity.as_ref().map_or(a.pos, |s| s.pos),
            "a clear takes no `severity`",
        );
        ok = false;
    }
    let pass = match &a.pass {
        None if action == AlarmAction::Clear => vec![Transition::Cleared],
        None => vec![Transition::Created],
        Some(list) => {
            for t in &list.value {
                if action == AlarmAction::Clear && t.value != Transition::Cleared {
                    b.error(t.pos, format!("a clear makes no `{}` transition", t.value))
                        .hint("a clear passes `cleared`, or nothing with `pass: []`");
                    ok = false;
                }
            }
            list.value.iter().map(|t| t.value).collect()
        }
    };
    let node = AlarmNode {
        pass,
        type_: type_?,
        action,
        severity: sev?,
        message: message?,
        details,
    };
    ok.then(|| Box::new(node) as Box<dyn NodeImpl>)
}

impl AlarmNode {
    fn raise(
        &self,
        cx: &mut Cx<'_>,
        p: &mut Packet,
        type_: String,
    ) -> Result<Option<(Transition, Alarm)>, String> {
        let sev = match &self.severity {
            Severity::Fixed(s) => *s,
            Severity::Expr(e) => {
                let v = e.eval(cx.rt, &mut p.vars)?.to_string();
                crate::alarm::Severity::parse(&v).ok_or_else(|| {
                    format!("severity `{v}` is not one of {}", SEVERITIES.join(", "))
                })?
            }
        };
        let message = match &self.message {
            Some(t) => t.render(cx.rt, &mut p.vars)?,
            None => format!("{type_} on {}", p.device),
        };
        let mut details = Map::new();
        for (k, e) in &self.details {
            details.insert(k.as_str().into(), e.eval(cx.rt, &mut p.vars)?);
        }
        let now = cx.now;
        Ok(cx
            .alarms
            .raise(&p.device, &type_, sev, message, details, now)
            .map(|(t, a)| (t, a.clone())))
    }
}

impl NodeImpl for AlarmNode {
    fn run(&self, cx: &mut Cx<'_>, mut p: Packet) -> Flow {
        let type_ = match self.type_.render(cx.rt, &mut p.vars) {
            Ok(t) => t,
            Err(e) => return Flow::Error(e, p),
        };
        let outcome = match self.action {
            AlarmAction::Raise => self.raise(cx, &mut p, type_),
            AlarmAction::Clear => {
                let now = cx.now;
                Ok(cx
                    .alarms
                    .clear(&p.device, &type_, now)
                    .map(|a| (Transition::Cleared, a.clone())))
            }
        };
        match outcome {
            Err(e) => Flow::Error(e, p),
            Ok(None) => Flow::Stop(Why::Suppressed),
            Ok(Some((t, mut alarm))) => {
                if t != Transition::Cleared {
                    cx.alarms
                        .set_origin(&p.device, &alarm.type_, cx.chain, cx.node);
                    alarm.origin = Some((cx.chain.to_string(), cx.node.to_string()));
                }
                let passes = self.pass.contains(&t);
                if passes {
                    p.with_msg(|m| m.insert("alarm".into(), Dynamic::from_map(alarm.to_map(t))));
                }
                cx.emit(Event::alarm(p.device.clone(), alarm, t));
                if passes {
                    Flow::Pass(p)
                } else {
                    Flow::Stop(Why::Suppressed)
                }
            }
        }
    }

    fn operator(&self, _cx: &mut Cx<'_>, t: Transition, p: Packet) -> Option<Flow> {
        (self.action == AlarmAction::Raise && self.pass.contains(&t)).then_some(Flow::Pass(p))
    }
}

/// `alarm` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlarmAction {
    /// Create the alarm, or update an active one (default).
    #[default]
    Raise,
    /// Clear the active alarm.
    Clear,
}
/// `alarm`: one alarm per (device, type), with ThingsBoard's lifecycle.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AlarmSpec {
    /// The alarm type, a template (`MotorOverload`, `${msg.sensor}Fault`).
    #[serde(rename = "type")]
    pub type_: Sp<String>,
    /// `raise` (default) or `clear`.
    #[serde(default)]
    pub action: Option<Sp<AlarmAction>>,
    /// `CRITICAL`, `MAJOR`, `MINOR`, `WARNING` or `INDETERMINATE`, or a Rhai expression giving one.
    #[serde(default)]
    pub severity: Option<Sp<ExprSrc>>,
    /// The alarm text, a template (`"${meta.device} is hot"`).
    #[serde(default)]
    pub message: Option<Sp<String>>,
    /// Extra values kept with the alarm: `name: EXPR`.
    #[serde(default)]
    pub details: Option<Sp<SpMap<Sp<ExprSrc>>>>,
    /// Which transitions go on to the nodes after this one. A raise passes `created` by
    /// default, and may list `severity_changed`, and an operator's `acknowledged` and `cleared`
    /// (by hand), which start at the node that raised the alarm; a clear passes `cleared`.
    /// `[]` passes none. An operator's transition never runs an `rpc` or `publish` node.
    #[serde(default)]
    pub pass: Option<Sp<Vec<Sp<crate::alarm::Transition>>>>,
}
