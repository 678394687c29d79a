//! The Rhai layer: one sandboxed engine, expressions and templates compiled once at load, and
//! evaluation against a message's `msg`, `attr` and `meta`.
//!
//! Invariants:
//! - Nothing is compiled per message. [`Expr`], [`Template`] and [`Script`] hold compiled ASTs.
//! - `msg`, `attr` and `meta` are ordinary scope variables, moved into a reused [`Scope`] for an
//!   evaluation and moved back out after it: no map is cloned to evaluate an expression, and the
//!   optimizer never bakes values into an AST (it would bake stale attributes).
//! - Scripts cannot reach files, the network, processes or the clock (rhai's `no_time`,
//!   `no_module`, `eval` disabled), cannot block (`sleep` is refused when compiling and fails
//!   when called by name), and limits on operations and on time stop a runaway script: it becomes
//!   that node's error.
//! - The time budget is the one place the rule core reads a clock: a monotonic one, checked
//!   every [`CLOCK_EVERY`] operations, and only to stop an evaluation. It never changes a
//!   result that finishes within budget, so dry-run stays exact for every rule that is not
//!   runaway.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod json;
mod native;

pub use json::JsonTemplate;

use rhai::{Dynamic, Engine, Scope, AST};

/// Most operations one evaluation may take before it is stopped (a `loop {}` ends here).
pub const MAX_OPERATIONS: u64 = 100_000;

/// Longest one evaluation may run. The operation limit alone does not bound time: one
/// operation can be a native call that works for long (a `sort` with a closure over thousands
/// of items took 1.7 s within 100,000 operations), and the shard's other devices wait meanwhile.
/// Debug builds (the test suite) run Rhai ten to fifty times slower, so they allow a second.
pub const MAX_EVAL_TIME: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(1)
} else {
    Duration::from_millis(100)
};

/// How often (in operations) an evaluation looks at the clock. An evaluation shorter than this
/// never reads it, so the common case costs nothing.
pub const CLOCK_EVERY: u64 = 1024;

/// Functions a rule may not call, with what to do instead: `sleep` blocks the shard thread
/// (Rhai's standard library has it; calling it by name, `Fn("sleep")`, fails too), and the
/// clock functions do not exist in the sandbox (no clock: dry-run must be exact), so a call
/// would fail on every message. Compiling a call of any of them is an error.
pub const FORBIDDEN_FUNCTIONS: &[(&str, &str)] = &[
    (
        "sleep",
        "a rule must not block its shard: to wait, use a `delay`, `debounce` or `for:` node",
    ),
    (
        "timestamp",
        "rules have no clock, so that a dry-run is exact: the message's time is `meta.ts` (ms since the epoch)",
    ),
    (
        "elapsed",
        "rules have no clock: compare `meta.ts` values (ms) instead",
    ),
];

/// Functions that block, replaced by failing ones in the engine.
const BLOCKING_FUNCTIONS: &[&str] = &["sleep"];

thread_local! {
    /// When the running evaluation passed its first [`CLOCK_EVERY`] operations (per thread: each
    /// shard evaluates on its own thread, one evaluation at a time).
    static EVAL_CLOCK: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The operation callback: the time budget. Rhai counts operations per evaluation from 1, so
/// the first check of an evaluation starts its clock and later checks compare against it.
fn progress(ops: u64) -> Option<Dynamic> {
    if ops % CLOCK_EVERY != 0 {
        return None;
    }
    EVAL_CLOCK.with(|c| {
        let now = Instant::now();
        match c.get() {
            Some(start) if ops > CLOCK_EVERY => {
                (now.duration_since(start) > MAX_EVAL_TIME).then(|| Dynamic::from(TIMED_OUT))
            }
            _ => {
                c.set(Some(now));
                None
            }
        }
    })
}

/// The value the operation callback stops an evaluation with when its time is up.
const TIMED_OUT: &str = "time budget";

/// The sandboxed engine every chain uses.
pub fn new_engine() -> Engine {
    let mut e = Engine::new();
    e.set_strict_variables(true);
    // Registered operators first (see `register_numbers`): with fast operators Rhai answers
    // a comparison of a string with a number `false` before looking at them.
    e.set_fast_operators(false);
    e.set_max_operations(MAX_OPERATIONS);
    e.on_progress(progress);
    for name in BLOCKING_FUNCTIONS {
        // The engine's own functions come before its packages', so these replace Rhai's.
        let refuse = move || -> Result<(), Box<rhai::EvalAltResult>> {
            Err(
                format!("`{name}()` is not available in rules: a rule must not block its shard")
                    .into(),
            )
        };
        e.register_fn(*name, move |_: rhai::INT| refuse());
        e.register_fn(*name, move |_: rhai::FLOAT| refuse());
    }
    register_numbers(&mut e);
    e.set_max_call_levels(32);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(256 * 1024);
    e.set_max_array_size(10_000);
    e.set_max_map_size(10_000);
    e.disable_symbol("eval");
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});
    e
}

/// Two things about numbers that Rhai leaves to the script, decided for readings:
/// - the common numeric functions work on integers as on floats (`msg.x.round()` for a reading
///   of `55`, which JSON gives as an integer), giving a float as they do for floats;
/// - ordering a string against a number (`"85" > 80`) is an error that says so, not Rhai's
///   silent `false`: a device that sends its reading as text would otherwise never be "hot".
///   Equality stays as it is (`"1" == 1` is false: they are different values).
fn register_numbers(e: &mut Engine) {
    use rhai::{ImmutableString, FLOAT, INT};
    type Unary = fn(FLOAT) -> FLOAT;
    let unary: [(&str, Unary); 12] = [
        ("round", FLOAT::round),
        ("floor", FLOAT::floor),
        ("ceiling", FLOAT::ceil),
        ("int", FLOAT::trunc),
        ("fraction", FLOAT::fract),
        ("sqrt", FLOAT::sqrt),
        ("exp", FLOAT::exp),
        ("ln", FLOAT::ln),
        ("log", FLOAT::log10),
        ("sin", FLOAT::sin),
        ("cos", FLOAT::cos),
        ("tan", FLOAT::tan),
    ];
    for (name, f) in unary {
        e.register_fn(name, move |x: INT| f(x as FLOAT));
    }
    e.register_fn("log", |x: INT, base: INT| (x as FLOAT).log(base as FLOAT));
    e.register_fn("log", |x: INT, base: FLOAT| (x as FLOAT).log(base));
    e.register_fn("log", |x: FLOAT, base: INT| x.log(base as FLOAT));
    fn refuse(
        op: &str,
        l: &dyn std::fmt::Debug,
        r: &dyn std::fmt::Debug,
    ) -> Box<rhai::EvalAltResult> {
        format!(
            "`{l:?} {op} {r:?}` compares text with a number; a reading sent as text must be converted first: `parse_float(msg.x)`"
        )
        .into()
    }
    type Res = Result<bool, Box<rhai::EvalAltResult>>;
    for op in [">", ">=", "<", "<="] {
        e.register_fn(op, move |l: ImmutableString, r: INT| -> Res {
            Err(refuse(op, &l, &r))
        });
        e.register_fn(op, move |l: ImmutableString, r: FLOAT| -> Res {
            Err(refuse(op, &l, &r))
        });
        e.register_fn(op, move |l: INT, r: ImmutableString| -> Res {
            Err(refuse(op, &l, &r))
        });
        e.register_fn(op, move |l: FLOAT, r: ImmutableString| -> Res {
            Err(refuse(op, &l, &r))
        });
    }
}

/// What a message looks like to Rhai: three maps.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Vars {
    /// The payload (`msg`).
    pub msg: Dynamic,
    /// The device's attributes (`attr`), read-only in effect: a copy per message.
    pub attr: Dynamic,
    /// `meta`: device, device_type, kind, topic, ts, topic captures, error.
    pub meta: Dynamic,
}

impl Vars {
    /// Makes `msg` this packet's own before it is changed: a `msg` shared with effects
    /// (`Packet::share_msg`) is taken back, copied only if an effect still holds it. Every write
    /// to `msg` comes after this (`Packet::with_msg`, and every Rhai evaluation, since a script
    /// may change `msg` in place); reads work on a shared `msg` as they are.
    pub fn own_msg(&mut self) {
        if self.msg.is_shared() {
            self.msg = std::mem::take(&mut self.msg).flatten();
        }
    }

    /// Makes `attr` this packet's own copy: it comes as the device's shared attributes, and a
    /// script could change it in place (the change stays in this message, as `attr` is
    /// read-only for rules). Before every Rhai evaluation, so at most once a message.
    pub fn own_attr(&mut self) {
        if self.attr.is_shared() {
            self.attr = self.attr.flatten_clone();
        }
    }
}

/// An engine and a scratch scope: what one shard needs to evaluate.
pub struct Runtime {
    engine: Arc<Engine>,
    scope: Scope<'static>,
}

impl Runtime {
    /// A runtime over a shared engine.
    pub fn new(engine: Arc<Engine>) -> Self {
        // The three variables stay in the scope; evaluations swap their values in and out, so
        // no variable name is built per evaluation.
        let mut scope = Scope::new();
        scope.push_dynamic("msg", Dynamic::UNIT);
        scope.push_dynamic("attr", Dynamic::UNIT);
        scope.push_dynamic("meta", Dynamic::UNIT);
        Runtime { engine, scope }
    }

    fn swap(&mut self, vars: &mut Vars) {
        for (name, slot) in [
            ("msg", &mut vars.msg),
            ("attr", &mut vars.attr),
            ("meta", &mut vars.meta),
        ] {
            if let Some(v) = self.scope.get_mut(name) {
                std::mem::swap(v, slot);
            }
        }
    }

    fn run(&mut self, ast: &AST, vars: &mut Vars) -> Result<Dynamic, String> {
        vars.own_msg();
        vars.own_attr();
        self.swap(vars);
        let (engine, scope) = (&self.engine, &mut self.scope);
        EVAL_CLOCK.with(|c| c.set(None));
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.eval_ast_with_scope::<Dynamic>(scope, ast)
        }));
        // A script's own `let`s come after our three: drop them, then take ours back.
        self.scope.rewind(3);
        self.swap(vars);
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(runtime_error_text(&e)),
            Err(_) => Err("the script engine failed on this message (internal error)".into()),
        }
    }
}

fn runtime_error_text(e: &rhai::EvalAltResult) -> String {
    use rhai::EvalAltResult as E;
    match e {
        E::ErrorTooManyOperations(_) => {
            format!("script stopped after {MAX_OPERATIONS} operations (a runaway loop?)")
        }
        E::ErrorTerminated(..) => format!(
            "script stopped after {} ms, its time budget (a runaway loop or a large sort?)",
            MAX_EVAL_TIME.as_millis()
        ),
        _ => {
            // rhai appends " (line 1, position 9)"; positions inside one expression are noise
            // at run time, where the node id says where.
            let t = e.to_string();
            match t.rfind(" (line ") {
                Some(i) => t[..i].to_string(),
                None => t,
            }
        }
    }
}

/// A compile error with its position in the compiled text (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    /// What is wrong.
    pub message: String,
    /// 1-based line in the text.
    pub line: usize,
    /// 1-based column in the text.
    pub col: usize,
    /// A hint, e.g. for strict-variable errors.
    pub hint: Option<String>,
}

fn compile_scope() -> Scope<'static> {
    let mut s = Scope::new();
    s.push_dynamic("msg", Dynamic::UNIT);
    s.push_dynamic("attr", Dynamic::UNIT);
    s.push_dynamic("meta", Dynamic::UNIT);
    s
}

/// Refuses calls of [`FORBIDDEN_FUNCTIONS`] (`sleep(1)`, `x.sleep()`), found with Rhai's own
/// tokenizer so that strings, comments and fields named like them (`msg.sleep`) are not mistaken
/// for calls.
#[allow(deprecated)] // rhai marks its `internals` API volatile, not deprecated
fn check_forbidden(engine: &Engine, src: &str) -> Result<(), CompileError> {
    use rhai::Token;
    let (tokens, _) = engine.lex([&src]);
    let mut prev: Option<(String, rhai::Position)> = None;
    for (tok, pos) in tokens {
        if matches!(tok, Token::EOF) {
            break;
        }
        if let (Some((name, at)), Token::LeftParen | Token::Unit) = (&prev, &tok) {
            let hint = FORBIDDEN_FUNCTIONS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, h)| h.to_string());
            return Err(CompileError {
                message: format!("`{name}()` is not available in rules"),
                line: at.line().unwrap_or(1),
                col: at.position().unwrap_or(1),
                hint,
            });
        }
        prev = match tok {
            Token::Identifier(name)
                if FORBIDDEN_FUNCTIONS.iter().any(|(n, _)| *n == name.as_str()) =>
            {
                Some((name.to_string(), pos))
            }
            _ => None,
        };
    }
    Ok(())
}

fn compile_error(e: &rhai::ParseError) -> CompileError {
    let pos = e.position();
    let mut message = e.err_type().to_string();
    let mut hint = None;
    if let rhai::ParseErrorType::VariableUndefined(name) = e.err_type() {
        message = format!("undefined variable `{name}`");
        hint = Some(format!(
            "expressions see `msg`, `attr` and `meta` (e.g. `msg.{name}`); a string literal needs inner quotes: '\"{name}\"'"
        ));
    }
    CompileError {
        message,
        line: pos.line().unwrap_or(1),
        col: pos.position().unwrap_or(1),
        hint,
    }
}

/// A compiled Rhai expression.
#[derive(Clone)]
pub struct Expr {
    ast: Arc<AST>,
    /// The source, for messages.
    pub src: Arc<str>,
    /// The same expression for the native evaluator, when it is in its subset (see `native`).
    native: Option<native::N>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.src)
    }
}

impl Expr {
    /// Compiles an expression (no statements) with `msg`, `attr`, `meta` in scope.
    pub fn compile(engine: &Engine, src: &str) -> Result<Expr, CompileError> {
        if src.trim().is_empty() {
            return Err(CompileError {
                message: "empty expression".into(),
                line: 1,
                col: 1,
                hint: None,
            });
        }
        let ast = engine
            .compile_expression_with_scope(&compile_scope(), src)
            .map_err(|e| compile_error(&e))?;
        check_forbidden(engine, src)?;
        Ok(Expr {
            ast: Arc::new(ast),
            src: src.into(),
            native: native::compile(src),
        })
    }

    /// Evaluates against a message.
    pub fn eval(&self, rt: &mut Runtime, vars: &mut Vars) -> Result<Dynamic, String> {
        if let Some(v) = self.native.as_ref().and_then(|n| native::eval(n, vars)) {
            return Ok(v);
        }
        rt.run(&self.ast, vars)
    }

    /// Evaluates and requires a boolean.
    pub fn eval_bool(&self, rt: &mut Runtime, vars: &mut Vars) -> Result<bool, String> {
        let v = self.eval(rt, vars)?;
        v.as_bool().map_err(|t| {
            if t == "()" {
                format!("`{}` gave () (a missing field?), not a boolean", self.src)
            } else {
                format!("`{}` gave a {t}, not a boolean", self.src)
            }
        })
    }
}

/// A compiled statement script (transform `script:`).
#[derive(Clone)]
pub struct Script {
    ast: Arc<AST>,
}

impl Script {
    /// Compiles a script with `msg`, `attr`, `meta` in scope.
    pub fn compile(engine: &Engine, src: &str) -> Result<Script, CompileError> {
        let ast = engine
            .compile_with_scope(&compile_scope(), src)
            .map_err(|e| compile_error(&e))?;
        check_forbidden(engine, src)?;
        Ok(Script { ast: Arc::new(ast) })
    }

    /// Runs the script; its value is returned.
    pub fn eval(&self, rt: &mut Runtime, vars: &mut Vars) -> Result<Dynamic, String> {
        rt.run(&self.ast, vars)
    }
}

/// A text with `${EXPR}` holes, each hole compiled once.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Lit(String),
    Hole(Expr),
}

impl Template {
    /// Compiles a template. A compile error's position is in the template text.
    pub fn compile(engine: &Engine, text: &str) -> Result<Template, CompileError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        let mut consumed = 0usize; // bytes of `text` before `rest`
        while let Some(i) = rest.find("${") {
            lit.push_str(&rest[..i]);
            let start = consumed + i + 2; // byte offset of the expression in `text`
            let body = &text[start..];
            let end = hole_end(body).ok_or_else(|| {
                let (line, col) = line_col(text, consumed + i);
                CompileError {
                    message: "`${` without its closing `}`".into(),
                    line,
                    col,
                    hint: None,
                }
            })?;
            let expr_src = &body[..end];
            let expr = Expr::compile(engine, expr_src).map_err(|mut e| {
                // Move the position from the hole to the template.
                let (hl, hc) = line_col(text, start);
                if e.line == 1 {
                    e.col += hc - 1;
                }
                e.line += hl - 1;
                e
            })?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Hole(expr));
            consumed = start + end + 1;
            rest = &text[consumed..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// A template that is only this text.
    pub fn literal(text: &str) -> Template {
        Template {
            parts: vec![Part::Lit(text.to_string())],
        }
    }

    /// Renders the template for a message.
    pub fn render(&self, rt: &mut Runtime, vars: &mut Vars) -> Result<String, String> {
        if let [Part::Lit(s)] = self.parts.as_slice() {
            return Ok(s.clone());
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Hole(e) => {
                    let v = e.eval(rt, vars)?;
                    if v.is_unit() {
                        out.push_str("()");
                    } else {
                        out.push_str(&v.to_string());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The byte index of the `}` closing a `${` hole whose body starts `body` (nested braces and
/// string literals skipped).
fn hole_end(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_str = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// 1-based line and column (chars) of byte offset `off` in `text`.
pub fn line_col(text: &str, off: usize) -> (usize, usize) {
    let before = &text[..off.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(msg: serde_json::Value) -> Vars {
        Vars {
            msg: rhai::serde::to_dynamic(msg).unwrap(),
            attr: rhai::serde::to_dynamic(serde_json::json!({"rated_current": 10.0})).unwrap(),
            meta: rhai::serde::to_dynamic(serde_json::json!({"device": "pump-3"})).unwrap(),
        }
    }

    #[test]
    fn expressions_see_msg_attr_meta() {
        let e = Arc::new(new_engine());
        let mut rt = Runtime::new(e.clone());
        let x = Expr::compile(&e, "msg.current > attr.rated_current * 1.2").unwrap();
        let mut v = vars(serde_json::json!({"current": 12.5}));
        assert!(x.eval_bool(&mut rt, &mut v).unwrap());
        let mut v = vars(serde_json::json!({"current": 11.0}));
        assert!(!x.eval_bool(&mut rt, &mut v).unwrap());
        // the maps come back after evaluation
        assert_eq!(
            v.msg.clone().cast::<rhai::Map>()["current"]
                .as_float()
                .unwrap(),
            11.0
        );
    }

    #[test]
    fn strict_variables_give_a_hint() {
        let e = new_engine();
        let err = Expr::compile(&e, "status == ok").unwrap_err();
        assert_eq!(err.message, "undefined variable `status`");
        assert_eq!((err.line, err.col), (1, 1));
        assert!(err.hint.unwrap().contains("'\"status\"'"));
    }

    #[test]
    fn runaway_is_stopped() {
        let e = Arc::new(new_engine());
        let s = Script::compile(&e, "loop { }").unwrap();
        let err = s
            .eval(&mut Runtime::new(e), &mut vars(serde_json::json!({})))
            .unwrap_err();
        assert!(err.contains("runaway"), "{err}");
    }

    #[test]
    fn template_holes_and_positions() {
        let e = Arc::new(new_engine());
        let t = Template::compile(&e, "${meta.device} at ${msg.pct.round().to_int()}%").unwrap();
        let mut v = vars(serde_json::json!({"pct": 31.4}));
        assert_eq!(
            t.render(&mut Runtime::new(e.clone()), &mut v).unwrap(),
            "pump-3 at 31%"
        );
        let err = Template::compile(&e, "ok ${msg.x +} end").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.col >= 6 && err.col <= 14, "{err:?}");
        let err = Template::compile(&e, "ok ${nope}").unwrap_err();
        assert_eq!((err.line, err.col), (1, 6));
    }
}

#[cfg(test)]
mod sandbox_tests {
    use super::*;

    fn run(src: &str) -> (Result<Dynamic, String>, Duration) {
        let e = Arc::new(new_engine());
        let Ok(s) = Script::compile(&e, src) else {
            panic!("{src} does not compile")
        };
        let mut rt = Runtime::new(e);
        let mut v = Vars {
            msg: Dynamic::from(rhai::Map::new()),
            attr: Dynamic::from(rhai::Map::new()),
            meta: Dynamic::from(rhai::Map::new()),
        };
        let t = Instant::now();
        let r = s.eval(&mut rt, &mut v);
        (r, t.elapsed())
    }

    #[test]
    fn sleep_does_not_compile_and_cannot_be_called_by_name() {
        let e = new_engine();
        for src in ["sleep(20)", "1 + sleep(0.5)", "msg.x.sleep()"] {
            let err = Expr::compile(&e, src).unwrap_err();
            assert!(
                err.message.contains("`sleep()` is not available"),
                "{src}: {err:?}"
            );
        }
        let Err(err) = Script::compile(&e, "let x = 1;\nsleep(600);") else {
            panic!("sleep compiled in a script")
        };
        assert_eq!((err.line, err.col), (2, 1));
        // Fields and strings named like it are fine.
        assert!(Expr::compile(&e, r#"msg.sleep == "sleep(1)""#).is_ok());
        // By name, past the compiler: refused when called, at once.
        let (r, took) = run(r#"let f = Fn("sle" + "ep"); f.call(5)"#);
        assert!(r.unwrap_err().contains("not available"));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn the_clock_functions_do_not_compile_and_say_what_to_use() {
        let e = new_engine();
        for src in ["timestamp()", "msg.t - timestamp()", "msg.t.elapsed()"] {
            let err = Expr::compile(&e, src).unwrap_err();
            assert!(err.message.contains("is not available"), "{src}: {err:?}");
            assert!(err.hint.unwrap_or_default().contains("meta.ts"), "{src}");
        }
        assert!(Expr::compile(&e, "msg.timestamp > 0").is_ok());
    }

    #[test]
    fn a_slow_evaluation_is_stopped_by_its_time_budget() {
        // Few operations, each a large native call: the operation limit alone lets it run
        // for seconds.
        let src = "let a = []; a.pad(9000, 0); let n = 0; \
                   for i in 0..5000 { let b = a; b.sort(); b.reverse(); n += b.len(); } n";
        let (r, took) = run(src);
        let err = r.unwrap_err();
        assert!(err.contains("time budget"), "{err}");
        assert!(took < MAX_EVAL_TIME * 10, "{took:?}");
    }

    #[test]
    fn an_evaluation_within_budget_is_not_touched() {
        let (r, _) = run("let n = 0; for i in 0..5000 { n += i } n");
        assert_eq!(r.unwrap().as_int().unwrap(), 12_497_500);
    }
}
