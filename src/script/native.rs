//! A native evaluator for the expressions rules are mostly made of: field paths (`msg.current`),
//! number, string, boolean and `()` literals, `+ - * / %`, comparisons, `&& || !`, `??` and
//! parentheses, with Rhai's precedence.
//!
//! It is only a fast path. An expression outside this subset is not compiled here, and at run
//! time every case whose Rhai semantics it does not reproduce exactly (strings added, types
//! compared that Rhai compares by its own rules, integer overflow, division by zero, a field of a
//! non-map…) answers `None`: the caller then evaluates the same expression with Rhai, so results
//! and error messages are always Rhai's. A differential property test holds the two together.

use rhai::{Dynamic, Map, FLOAT, INT};

use super::Vars;

/// A compiled expression of the subset.
#[derive(Debug, Clone)]
pub(super) enum N {
    Lit(Dynamic),
    Path(Root, Vec<String>),
    Neg(Box<N>),
    Not(Box<N>),
    Bin(Op, Box<N>, Box<N>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Root {
    Msg,
    Attr,
    Meta,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Coalesce,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Op {
    /// Rhai's precedence (its tokenizer's table); all of these bind to the left.
    fn precedence(self) -> u8 {
        match self {
            Op::Or => 30,
            Op::And => 60,
            Op::Eq | Op::Ne => 90,
            Op::Lt | Op::Le | Op::Gt | Op::Ge => 130,
            Op::Coalesce => 135,
            Op::Add | Op::Sub => 150,
            Op::Mul | Op::Div | Op::Rem => 180,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(INT),
    Float(FLOAT),
    Str(String),
    Ident(String),
    Dot,
    Open,
    Close,
    Bang,
    Op(Op),
}

fn tokens(src: &str) -> Option<Vec<Tok>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let two = b.get(i..i + 2);
        let op2 = match two {
            Some(b"||") => Some(Op::Or),
            Some(b"&&") => Some(Op::And),
            Some(b"==") => Some(Op::Eq),
            Some(b"!=") => Some(Op::Ne),
            Some(b"<=") => Some(Op::Le),
            Some(b">=") => Some(Op::Ge),
            Some(b"??") => Some(Op::Coalesce),
            // Comments, `**`, `<<`, `>>`, `+=`…: not ours.
            Some(
                b"//" | b"/*" | b"**" | b"<<" | b">>" | b"+=" | b"-=" | b"*=" | b"/=" | b"%="
                | b"=>" | b"->",
            ) => return None,
            _ => None,
        };
        if let Some(op) = op2 {
            out.push(Tok::Op(op));
            i += 2;
            continue;
        }
        let single = match c {
            b'.' => Some(Tok::Dot),
            b'(' => Some(Tok::Open),
            b')' => Some(Tok::Close),
            b'!' => Some(Tok::Bang),
            b'<' => Some(Tok::Op(Op::Lt)),
            b'>' => Some(Tok::Op(Op::Gt)),
            b'+' => Some(Tok::Op(Op::Add)),
            b'-' => Some(Tok::Op(Op::Sub)),
            b'*' => Some(Tok::Op(Op::Mul)),
            b'/' => Some(Tok::Op(Op::Div)),
            b'%' => Some(Tok::Op(Op::Rem)),
            _ => None,
        };
        if let Some(t) = single {
            out.push(t);
            i += 1;
            continue;
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                let end = src[i + 1..].find('"')? + i + 1;
                let s = &src[i + 1..end];
                if s.contains('\\') {
                    return None;
                }
                out.push(Tok::Str(s.to_string()));
                i = end + 1;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                // A float needs digits on both sides of the point (`1.round()` is a method call).
                if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_' || b[i] == b'.') {
                        return None;
                    }
                    out.push(Tok::Float(src[start..i].parse().ok()?));
                } else {
                    if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
                        return None;
                    }
                    out.push(Tok::Int(src[start..i].parse().ok()?));
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Ident(src[start..i].to_string()));
            }
            _ => return None,
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expr(&mut self, min: u8) -> Option<N> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            if op.precedence() < min {
                break;
            }
            self.at += 1;
            // `??` after anything but a field path (`attr.x ?? 10.0`, the idiom) is Rhai's:
            // its constant folding gives literal operands results of its own.
            if op == Op::Coalesce && !matches!(lhs, N::Path(..)) {
                return None;
            }
            let rhs = self.expr(op.precedence() + 1)?;
            lhs = N::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Some(lhs)
    }

    fn unary(&mut self) -> Option<N> {
        match self.peek()? {
            Tok::Op(Op::Sub) => {
                self.at += 1;
                Some(N::Neg(Box::new(self.unary()?)))
            }
            Tok::Bang => {
                self.at += 1;
                Some(N::Not(Box::new(self.unary()?)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Option<N> {
        match self.next()? {
            Tok::Int(i) => Some(N::Lit(Dynamic::from_int(i))),
            Tok::Float(f) => Some(N::Lit(Dynamic::from_float(f))),
            Tok::Str(s) => Some(N::Lit(Dynamic::from(s))),
            Tok::Open => {
                if self.peek() == Some(&Tok::Close) {
                    self.at += 1;
                    return Some(N::Lit(Dynamic::UNIT));
                }
                let e = self.expr(0)?;
                (self.next()? == Tok::Close).then_some(e)
            }
            Tok::Ident(name) => {
                let root = match name.as_str() {
                    "true" => return Some(N::Lit(Dynamic::TRUE)),
                    "false" => return Some(N::Lit(Dynamic::FALSE)),
                    "msg" => Root::Msg,
                    "attr" => Root::Attr,
                    "meta" => Root::Meta,
                    _ => return None,
                };
                let mut path = Vec::new();
                while self.peek() == Some(&Tok::Dot) {
                    self.at += 1;
                    match self.next()? {
                        Tok::Ident(f) => path.push(f),
                        _ => return None,
                    }
                }
                // `msg.x(…)` is a method call: not ours.
                if self.peek() == Some(&Tok::Open) {
                    return None;
                }
                Some(N::Path(root, path))
            }
            _ => None,
        }
    }
}

/// Compiles an expression of the subset; `None` for anything else.
pub(super) fn compile(src: &str) -> Option<N> {
    let mut p = Parser {
        toks: tokens(src)?,
        at: 0,
    };
    let e = p.expr(0)?;
    (p.at == p.toks.len()).then_some(e)
}

enum Num {
    I(INT),
    F(FLOAT),
}

/// Asked by kind first: rhai's `as_int` on a float (and `as_float` on an int) fails with the
/// type's name, which it looks up, and this runs for every operand.
fn num(v: &Dynamic) -> Option<Num> {
    if v.is_int() {
        v.as_int().ok().map(Num::I)
    } else if v.is_float() {
        v.as_float().ok().map(Num::F)
    } else {
        None
    }
}

fn as_f(n: &Num) -> FLOAT {
    match n {
        Num::I(i) => *i as FLOAT,
        Num::F(f) => *f,
    }
}

/// Evaluates; `None` means "let Rhai decide".
pub(super) fn eval(n: &N, vars: &Vars) -> Option<Dynamic> {
    match n {
        N::Lit(v) => Some(v.clone()),
        N::Path(root, path) => {
            let start = match root {
                Root::Msg => &vars.msg,
                Root::Attr => &vars.attr,
                Root::Meta => &vars.meta,
            };
            field(start, path)
        }
        N::Neg(x) => match num(&eval(x, vars)?)? {
            Num::I(i) => i.checked_neg().map(Dynamic::from_int),
            Num::F(f) => Some(Dynamic::from_float(-f)),
        },
        N::Not(x) => eval(x, vars)?
            .as_bool()
            .ok()
            .map(|b| Dynamic::from_bool(!b)),
        N::Bin(op, a, b) => bin(*op, a, b, vars),
    }
}

/// Rhai's float comparison (its `builtin.rs`, checked build): relative to the larger magnitude,
/// within `FLOAT::EPSILON` counts as equal, so `0.1 + 0.2 == 0.3`; a NaN or an infinity makes
/// every comparison false.
fn float_cmp(op: Op, x: FLOAT, y: FLOAT) -> bool {
    let max = if x * y == 0.0 {
        1.0
    } else {
        x.abs().max(y.abs())
    };
    if max == 0.0 {
        return matches!(op, Op::Eq | Op::Ge | Op::Le);
    }
    match op {
        Op::Eq => (x - y).abs() / max <= FLOAT::EPSILON,
        Op::Ne => (x - y).abs() / max > FLOAT::EPSILON,
        Op::Gt => (x - y) / max > FLOAT::EPSILON,
        Op::Ge => (x - y) / max > -FLOAT::EPSILON,
        Op::Lt => (y - x) / max > FLOAT::EPSILON,
        _ => (y - x) / max > -FLOAT::EPSILON,
    }
}

/// The value at `path` under `v`, by reference: only the leaf is cloned. A missing field is `()`;
/// a field of something that is not a map is Rhai's to judge.
fn field(v: &Dynamic, path: &[String]) -> Option<Dynamic> {
    let Some((first, rest)) = path.split_first() else {
        // A `msg` shared with effects is handed out as a plain value, never as the shared one.
        return Some(v.flatten_clone());
    };
    let map = v.read_lock::<Map>()?;
    match map.get(first.as_str()) {
        Some(next) if !rest.is_empty() => field(next, rest),
        Some(leaf) => Some(leaf.clone()),
        None if rest.is_empty() => Some(Dynamic::UNIT),
        None => None,
    }
}

fn bin(op: Op, a: &N, b: &N, vars: &Vars) -> Option<Dynamic> {
    let l = eval(a, vars)?;
    match op {
        Op::And | Op::Or => {
            let lb = l.as_bool().ok()?;
            if (op == Op::And && !lb) || (op == Op::Or && lb) {
                return Some(Dynamic::from_bool(lb));
            }
            return eval(b, vars)?.as_bool().ok().map(Dynamic::from_bool);
        }
        Op::Coalesce => return if l.is_unit() { eval(b, vars) } else { Some(l) },
        _ => {}
    }
    let r = eval(b, vars)?;
    match op {
        Op::Eq | Op::Ne => {
            let eq = if l.is_unit() || r.is_unit() {
                l.is_unit() && r.is_unit()
            } else if let (Some(x), Some(y)) = (num(&l), num(&r)) {
                match (x, y) {
                    (Num::I(x), Num::I(y)) => x == y,
                    (x, y) => return Some(Dynamic::from_bool(float_cmp(op, as_f(&x), as_f(&y)))),
                }
            } else if l.is_string() && r.is_string() {
                l.read_lock::<rhai::ImmutableString>()?.as_str()
                    == r.read_lock::<rhai::ImmutableString>()?.as_str()
            } else if let (Ok(x), Ok(y)) = (l.as_bool(), r.as_bool()) {
                x == y
            } else {
                return None;
            };
            Some(Dynamic::from_bool(if op == Op::Eq { eq } else { !eq }))
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let ord = if let (Some(x), Some(y)) = (num(&l), num(&r)) {
                match (x, y) {
                    (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
                    (x, y) => return Some(Dynamic::from_bool(float_cmp(op, as_f(&x), as_f(&y)))),
                }
            } else if l.is_string() && r.is_string() {
                Some(
                    l.read_lock::<rhai::ImmutableString>()?
                        .as_str()
                        .cmp(r.read_lock::<rhai::ImmutableString>()?.as_str()),
                )
            } else {
                return None;
            };
            use std::cmp::Ordering::*;
            let v = match (op, ord) {
                (_, None) => false, // NaN
                (Op::Lt, Some(o)) => o == Less,
                (Op::Le, Some(o)) => o != Greater,
                (Op::Gt, Some(o)) => o == Greater,
                (_, Some(o)) => o != Less,
            };
            Some(Dynamic::from_bool(v))
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem => match (num(&l)?, num(&r)?) {
            (Num::I(x), Num::I(y)) => match op {
                Op::Add => x.checked_add(y),
                Op::Sub => x.checked_sub(y),
                Op::Mul => x.checked_mul(y),
                Op::Div => x.checked_div(y),
                _ => x.checked_rem(y),
            }
            .map(Dynamic::from_int),
            (x, y) => {
                let (x, y) = (as_f(&x), as_f(&y));
                Some(Dynamic::from_float(match op {
                    Op::Add => x + y,
                    Op::Sub => x - y,
                    Op::Mul => x * y,
                    Op::Div => x / y,
                    _ => x % y,
                }))
            }
        },
        Op::And | Op::Or | Op::Coalesce => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    use crate::script::{new_engine, Expr, Runtime};

    fn value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            prop_oneof![-3i64..4, Just(i64::MAX), Just(i64::MIN), Just(0)]
                .prop_map(serde_json::Value::from),
            prop_oneof![
                -2.5f64..2.5,
                Just(0.0),
                Just(1e300),
                Just(0.1),
                Just(0.2),
                Just(0.3),
                Just(1.0000000000000002)
            ]
            .prop_map(serde_json::Value::from),
            prop::sample::select(vec!["a", "b", "", "offline"]).prop_map(serde_json::Value::from),
            Just(serde_json::json!({"x": 1, "y": 2.5})),
        ]
    }

    fn leaf() -> impl Strategy<Value = String> {
        prop_oneof![prop::sample::select(vec![
            "msg.a",
            "msg.b",
            "attr.a",
            "meta.a",
            "msg.m.x",
            "msg.m.y",
            "msg.a.x",
            "msg.missing",
            "1",
            "0",
            "2",
            "-3",
            "2.5",
            "0.0",
            "1.0",
            "9223372036854775807",
            "\"a\"",
            "\"b\"",
            "true",
            "false",
            "()",
        ])
        .prop_map(str::to_string),]
    }

    fn expr() -> impl Strategy<Value = String> {
        leaf().prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    prop::sample::select(vec![
                        "||", "&&", "==", "!=", "<", "<=", ">", ">=", "??", "+", "-", "*", "/", "%"
                    ]),
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
                inner.clone().prop_map(|a| format!("({a})")),
                inner.clone().prop_map(|a| format!("-{a}")),
                inner.prop_map(|a| format!("!{a}")),
            ]
        })
    }

    fn same(a: &Dynamic, b: &Dynamic) -> bool {
        if a.type_name() != b.type_name() {
            return false;
        }
        match (a.as_float(), b.as_float()) {
            (Ok(x), Ok(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            _ => a.to_string() == b.to_string(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6000, ..ProptestConfig::default() })]

        /// Wherever the native evaluator answers, Rhai gives the same value of the same type.
        #[test]
        fn native_agrees_with_rhai(src in expr(), a in value(), b in value(), m in value()) {
            let engine = Arc::new(new_engine());
            // Rhai may reject what we parse (e.g. `true && 1` is a type error at compile time):
            // then there is nothing to compare.
            let Ok(x) = Expr::compile(&engine, &src) else { return Ok(()) };
            let Some(n) = x.native.clone() else { return Ok(()) };
            let to = |v: serde_json::Value| rhai::serde::to_dynamic(v).unwrap();
            let vars = Vars {
                msg: to(serde_json::json!({"a": a.clone(), "b": b, "m": m})),
                attr: to(serde_json::json!({"a": a.clone()})),
                meta: to(serde_json::json!({"a": a})),
            };
            let Some(native) = eval(&n, &vars) else { return Ok(()) };
            let mut slow = x.clone();
            slow.native = None;
            let mut v = vars.clone();
            let rhai = slow.eval(&mut Runtime::new(engine), &mut v);
            prop_assert!(rhai.as_ref().is_ok_and(|r| same(r, &native)), "{src}: native {native:?}, rhai {rhai:?}");
        }
    }

    #[test]
    fn the_rules_expressions_are_in_the_subset() {
        for src in [
            "msg.current > attr.rated_current * 1.2",
            "(msg.current / attr.rated_current - 1.0) * 100.0",
            "msg.temperature > (attr.max_temp ?? 80.0)",
            "msg.status == \"offline\"",
            "attr.rated_current != () && msg.current != ()",
            "msg.rms_avg > attr.vibration_limit ?? 7.1",
        ] {
            assert!(compile(src).is_some(), "{src}");
        }
        for src in [
            "msg.x.round()",
            "if msg.x { 1 } else { 2 }",
            "msg.x ** 2",
            "\"a\\\"b\"",
            "1e5",
            "f(1)",
            "msg[\"x\"]",
        ] {
            assert!(compile(src).is_none(), "{src}");
        }
    }
}
