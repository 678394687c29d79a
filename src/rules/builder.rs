//! The [`Builder`] node kinds compile their keys with (`src/rules/nodes/`): each method reports
//! its own problems at the right file position and returns `None` on error. It stands below both
//! the compiler and the nodes, so neither has to import the other to share it.

use std::collections::{BTreeSet, HashMap};

use rhai::Engine;

use super::syntax::ExprSrc;
use crate::diag::{Diagnostics, Source};
use crate::duration;
use crate::engine::program::Reads;
use crate::script::{CompileError, Expr, Script, Template};
use crate::yaml::{self, did_you_mean, Pos, Sp};

/// What node builders use to compile their keys: each method reports its own problems (at the
/// right file position) and returns `None` on error, so a builder can check every key.
pub struct Builder<'a> {
    /// The Rhai engine.
    pub engine: &'a Engine,
    pub(super) src: &'a Source,
    pub(super) diags: &'a mut Diagnostics,
    pub(super) ids: &'a HashMap<String, usize>,
    pub(super) channels: Option<&'a BTreeSet<String>>,
    pub(super) failed: bool,
    pub(super) reads: Reads,
    /// The graph edges the node being built adds besides `next`/`else`/`on_error` (a switch's
    /// targets), for the cycle and reachability checks.
    pub(super) edges: Vec<(usize, Pos)>,
}

impl Builder<'_> {
    /// Reports an error.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) -> &mut crate::diag::Diagnostic {
        self.failed = true;
        self.diags.error(self.src, pos, message)
    }

    fn compile_error(&mut self, at: Pos, e: CompileError, what: &str) {
        let pos = yaml::pos_in_scalar(&self.src.text, at, e.line, e.col);
        let d = self.error(pos, format!("{what}: {}", e.message));
        if let Some(h) = e.hint {
            d.hint(h);
        }
    }

    /// Notes that the node being built reads `meta` and/or `attr` by itself (not through an
    /// expression): influx tags, rpc command patterns, channel templates.
    pub fn reads(&mut self, meta: bool, attr: bool) {
        self.reads.meta |= meta;
        self.reads.attr |= attr;
    }

    /// Records a graph edge of the node being built to node `to` (a switch's case target).
    pub fn edge(&mut self, to: usize, pos: Pos) {
        self.edges.push((to, pos));
    }

    fn saw(&mut self, src: &str) {
        self.reads(src.contains("meta"), src.contains("attr"));
    }

    /// Compiles an expression.
    pub fn expr(&mut self, s: &Sp<ExprSrc>) -> Option<Expr> {
        self.saw(&s.text);
        match Expr::compile(self.engine, &s.text) {
            Ok(e) => Some(e),
            Err(e) => {
                self.compile_error(s.pos, e, "in expression");
                None
            }
        }
    }

    /// Compiles an optional expression: `None` when it was given and failed (reported),
    /// `Some(None)` when it was not given.
    pub fn opt_expr(&mut self, s: &Option<Sp<ExprSrc>>) -> Option<Option<Expr>> {
        match s {
            None => Some(None),
            Some(s) => self.expr(s).map(Some),
        }
    }

    /// Compiles a `${}` template.
    pub fn template(&mut self, s: &Sp<String>) -> Option<Template> {
        self.saw(s);
        match Template::compile(self.engine, s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.compile_error(s.pos, e, "in template");
                None
            }
        }
    }

    /// Compiles an optional template: `None` when given and failed, `Some(None)` when absent.
    pub fn opt_template(&mut self, s: &Option<Sp<String>>) -> Option<Option<Template>> {
        match s {
            None => Some(None),
            Some(s) => self.template(s).map(Some),
        }
    }

    /// Compiles a statement script.
    pub fn script(&mut self, s: &Sp<String>) -> Option<Script> {
        self.saw(s);
        match Script::compile(self.engine, s) {
            Ok(x) => Some(x),
            Err(e) => {
                self.compile_error(s.pos, e, "in script");
                None
            }
        }
    }

    /// Parses a duration (`500ms`, `30s`, `5m`, `1h`) into milliseconds.
    pub fn duration(&mut self, s: &Sp<String>) -> Option<i64> {
        match duration::parse(s) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.error(s.pos, e)
                    .hint("durations are a number and a unit: `500ms`, `30s`, `5m`, `1h`, `1d`");
                None
            }
        }
    }

    /// Parses an optional duration: `None` when given and bad, `Some(None)` when absent.
    pub fn opt_duration(&mut self, s: &Option<Sp<String>>) -> Option<Option<i64>> {
        match s {
            None => Some(None),
            Some(s) => self.duration(s).map(Some),
        }
    }

    /// Resolves a node id in this chain.
    pub fn target(&mut self, s: &Sp<String>) -> Option<usize> {
        if let Some(i) = self.ids.get(s.as_str()) {
            return Some(*i);
        }
        let hint = did_you_mean(s, self.ids.keys().map(String::as_str));
        let d = self.error(s.pos, format!("unknown node id `{}`", s.value));
        if let Some(h) = hint {
            d.hint(h);
        }
        None
    }

    /// Checks a notification channel name against the config (when one was given).
    pub fn channel(&mut self, s: &Sp<String>) -> bool {
        let Some(known) = self.channels else {
            return true;
        };
        if known.contains(s.as_str()) {
            return true;
        }
        let hint = did_you_mean(s, known.iter().map(String::as_str)).unwrap_or_else(|| {
            format!(
                "define it under `channels:` in the config (known: {})",
                join(known)
            )
        });
        self.error(s.pos, format!("unknown notification channel `{}`", s.value))
            .hint(hint);
        false
    }
}

fn join(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
