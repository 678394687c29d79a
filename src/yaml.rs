//! A YAML document as a tree that remembers where every value came from, and a serde
//! `Deserializer` over that tree.
//!
//! Why not deserialize the typed model straight from serde-saphyr? serde stops at the first
//! error, and users want every problem of a chain at once. So a file is parsed once by
//! serde-saphyr into this tree (syntax errors, alias bombs and deep nesting are caught there,
//! by its budgets), and then each part of the model (the chain header, each node, each test
//! case) is deserialized from its own subtree: a typo in one node does not hide the errors of
//! the others. Every value keeps its [`Pos`], and [`Sp<T>`] carries it into the model.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A position in a source file: 1-based line and column (in characters) and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub col: u32,
    /// Byte offset in the source text.
    pub offset: usize,
}

impl Pos {
    fn from_location(loc: serde_saphyr::Location, text: &str) -> Pos {
        let line = u32::try_from(loc.line()).unwrap_or(u32::MAX);
        let col = u32::try_from(loc.column()).unwrap_or(u32::MAX);
        let offset = loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok())
            .unwrap_or_else(|| offset_of(text, line, col));
        Pos { line, col, offset }
    }
}

/// Byte offset of a 1-based line/column in `text` (the end of the text if out of range).
pub fn offset_of(text: &str, line: u32, col: u32) -> usize {
    let mut off = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            return off
                + l.char_indices()
                    .nth(col.saturating_sub(1) as usize)
                    .map_or(l.len(), |(b, _)| b);
        }
        off += l.len();
    }
    text.len()
}

/// A YAML value with the position of every node below it.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (plain, quoted or block scalar).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Node, Node)>),
}

/// A YAML value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Yaml,
    /// Where it starts in the file (for quoted scalars: the opening quote).
    pub pos: Pos,
}

impl Node {
    /// The entry `key` of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Yaml::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string of a string node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the node's YAML type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Yaml::Null => "null",
            Yaml::Bool(_) => "a boolean",
            Yaml::Int(_) => "an integer",
            Yaml::Float(_) => "a float",
            Yaml::Str(_) => "a string",
            Yaml::Seq(_) => "a list",
            Yaml::Map(_) => "a map",
        }
    }

    /// The value as JSON (positions dropped); used to check files against the JSON Schemas.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Yaml::Null => J::Null,
            Yaml::Bool(b) => J::Bool(*b),
            Yaml::Int(i) => J::from(*i),
            Yaml::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Yaml::Str(s) => J::String(s.clone()),
            Yaml::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Yaml::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A scalar as text (a mapping key such as `1:` or `true:` reads as "1" / "true").
    pub fn scalar_text(&self) -> String {
        match &self.value {
            Yaml::Null => "null".into(),
            Yaml::Bool(b) => b.to_string(),
            Yaml::Int(i) => i.to_string(),
            Yaml::Float(f) => f.to_string(),
            Yaml::Str(s) => s.clone(),
            Yaml::Seq(_) | Yaml::Map(_) => String::new(),
        }
    }
}

/// Limits on what a rule file may hold. These stop YAML bombs ("billion laughs") and absurd
/// nesting long before they cost time or memory. The value budget grows with the text: written
/// out, every value takes at least a byte, so a large plain file (a registry of 20,000 devices)
/// loads, while aliases, the only way to expand past the text, stay bounded by
/// `MAX_REPLAYED_EVENTS`.
const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 100_000;
const MAX_ALIASES: usize = 1_000;
const MAX_REPLAYED_EVENTS: usize = 100_000;

/// The value budget for a text: [`MAX_NODES`] plus one per byte.
fn max_nodes(text: &str) -> usize {
    MAX_NODES + text.len()
}

/// Parses YAML text into a [`Node`] tree. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, (Pos, String)> {
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Node {
            value: Yaml::Null,
            pos: Pos {
                line: 1,
                col: 1,
                offset: 0,
            },
        });
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = max_nodes(text);
    budget.max_aliases = MAX_ALIASES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    options.with_snippet = false;
    // YAML 1.2: only `true`/`false` are booleans (`on`, `no`, `n` stay strings: the "Norway problem").
    options.strict_booleans = true;
    let spanned: serde_saphyr::Spanned<Raw> = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| {
            let pos = e
                .location()
                .map(|l| Pos::from_location(l, text))
                .unwrap_or(Pos {
                    line: 1,
                    col: 1,
                    offset: 0,
                });
            (pos, saphyr_message(&e, text))
        })?;
    Ok(convert(spanned, text))
}

/// serde-saphyr's message without its position (we print `path:line:col` ourselves), and in
/// our words where the limits against YAML bombs were hit.
fn saphyr_message(e: &serde_saphyr::Error, source: &str) -> String {
    let text = e.without_snippet().to_string();
    let lower = text.to_lowercase();
    if lower.contains("budget") || lower.contains("alias") || lower.contains("recursion") {
        return format!(
            "the document is too deep or expands too much (a YAML bomb?): a file may nest at most \
             {MAX_DEPTH} levels, hold at most {} values and use at most {MAX_ALIASES} aliases",
            max_nodes(source)
        );
    }
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    text.trim_start_matches("error: ").to_string()
}

/// The untyped value serde-saphyr builds; children keep their spans.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<serde_saphyr::Spanned<Raw>>),
    Map(Vec<(serde_saphyr::Spanned<Raw>, serde_saphyr::Spanned<Raw>)>),
}

fn convert(s: serde_saphyr::Spanned<Raw>, text: &str) -> Node {
    let pos = Pos::from_location(s.referenced, text);
    let value = match s.value {
        Raw::Null => Yaml::Null,
        Raw::Bool(b) => Yaml::Bool(b),
        Raw::Int(i) => Yaml::Int(i),
        Raw::Float(f) => Yaml::Float(f),
        Raw::Str(s) => Yaml::Str(s),
        Raw::Seq(items) => Yaml::Seq(items.into_iter().map(|i| convert(i, text)).collect()),
        Raw::Map(entries) => Yaml::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k, text), convert(v, text)))
                .collect(),
        ),
    };
    Node { value, pos }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                Raw::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Raw, E> {
                Ok(Raw::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Raw, E> {
                Ok(i64::try_from(u).map_or(Raw::Float(u as f64), Raw::Int))
            }
            fn visit_i128<E>(self, i: i128) -> Result<Raw, E> {
                Ok(i64::try_from(i).map_or(Raw::Float(i as f64), Raw::Int))
            }
            fn visit_u128<E>(self, u: u128) -> Result<Raw, E> {
                Ok(i64::try_from(u).map_or(Raw::Float(u as f64), Raw::Int))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Raw, E> {
                Ok(Raw::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
                Ok(Raw::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Raw, E> {
                Ok(Raw::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = a.next_element()? {
                    items.push(i);
                }
                Ok(Raw::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = a.next_key()? {
                    entries.push((k, a.next_value()?));
                }
                Ok(Raw::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Typed deserialization from a subtree.

/// A value of the model together with the position it was written at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sp<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub pos: Pos,
}

impl<T> Sp<T> {
    /// A value with no position (defaults, values built in code).
    pub fn unplaced(value: T) -> Self {
        Sp {
            value,
            pos: Pos::default(),
        }
    }
}

impl<T> std::ops::Deref for Sp<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// The newtype name by which [`Sp`] asks [`NodeDe`] for the position of a value.
const SP_MARKER: &str = "$rulechain::Sp";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sp<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Sp<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            // From NodeDe: a 2-tuple (line, col, offset) then the value.
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Sp<T>, A::Error> {
                let (line, col, offset): (u32, u32, u64) = a
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing position"))?;
                let value = a
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing value"))?;
                Ok(Sp {
                    value,
                    pos: Pos {
                        line,
                        col,
                        offset: offset as usize,
                    },
                })
            }
            // From any other deserializer: no position.
            fn visit_newtype_struct<D: de::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Sp<T>, D::Error> {
                T::deserialize(d).map(Sp::unplaced)
            }
        }
        d.deserialize_newtype_struct(SP_MARKER, V(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

/// An error while deserializing a subtree: a message, a position, and a hint.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// What is wrong.
    pub message: String,
    /// Where (filled in by the innermost node that knows).
    pub pos: Option<Pos>,
    /// How to fix it, when we can tell ("did you mean `filter`?").
    pub hint: Option<String>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            pos: None,
            hint: None,
        }
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            message: format!("unknown key `{field}`"),
            pos: None,
            hint: Some(
                did_you_mean(field, expected.iter().copied())
                    .unwrap_or_else(|| format!("expected one of: {}", expected.join(", "))),
            ),
        }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            message: format!("unknown value `{variant}`"),
            pos: None,
            hint: Some(
                did_you_mean(variant, expected.iter().copied())
                    .unwrap_or_else(|| format!("expected one of: {}", expected.join(", "))),
            ),
        }
    }
    fn missing_field(field: &'static str) -> Self {
        DeError {
            message: format!("missing key `{field}`"),
            pos: None,
            hint: None,
        }
    }
    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError {
            message: format!("expected {exp}, found {}", unexpected(unexp)),
            pos: None,
            hint: None,
        }
    }
}

fn unexpected(u: de::Unexpected) -> String {
    match u {
        de::Unexpected::Str(s) => format!("the string \"{s}\""),
        de::Unexpected::Map => "a map".into(),
        de::Unexpected::Seq => "a list".into(),
        de::Unexpected::Unit => "null".into(),
        other => other.to_string(),
    }
}

/// "did you mean `x`?" for the closest of `candidates` to `word`, if one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Deserializes `T` from `node`, with every error placed at the innermost node it concerns.
pub fn from_node<'a, T: Deserialize<'a>>(node: &'a Node) -> Result<T, DeError> {
    T::deserialize(NodeDe(node))
}

/// Deserializes a map node, reporting every problem rather than the first: when reading fails,
/// `report` gets the error, the entry it is in (the deepest map entry that starts at or before
/// the error's position) is taken out, and the rest is read again. So a wrong value under
/// `on:` hides neither a misspelled `nodes:` key nor a broken `when:` beside it. Returns what
/// the entries without problems read as, if they still make a whole.
pub fn from_node_every<T: de::DeserializeOwned>(
    node: &Node,
    mut report: impl FnMut(DeError),
) -> Option<T> {
    let mut node = node.clone();
    // Each round takes out one entry, so this ends; the bound is a guard against a bug.
    for _ in 0..10_000 {
        match from_node::<T>(&node) {
            Ok(t) => return Some(t),
            Err(e) => {
                let at = e.pos;
                report(e);
                if !at.is_some_and(|p| take_out(&mut node, p)) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the deepest map entry whose key starts at or before `p`; false if there is none.
/// An error at the map's own start is about the map as a whole (a missing key): its parent's
/// entry goes, or nothing can.
fn take_out(node: &mut Node, p: Pos) -> bool {
    if p <= node.pos {
        return false;
    }
    let Yaml::Map(entries) = &mut node.value else {
        return false;
    };
    let Some(i) = entries.iter().rposition(|(k, _)| k.pos <= p) else {
        return false;
    };
    if matches!(entries[i].1.value, Yaml::Map(_)) && take_out(&mut entries[i].1, p) {
        return true;
    }
    entries.remove(i);
    true
}

fn place<T>(r: Result<T, DeError>, pos: Pos) -> Result<T, DeError> {
    r.map_err(|mut e| {
        e.pos.get_or_insert(pos);
        e
    })
}

/// A serde `Deserializer` over a [`Node`].
pub struct NodeDe<'a>(pub &'a Node);

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let n = self.0;
        let r = match &n.value {
            Yaml::Null => v.visit_unit(),
            Yaml::Bool(b) => v.visit_bool(*b),
            Yaml::Int(i) => v.visit_i64(*i),
            Yaml::Float(f) => v.visit_f64(*f),
            Yaml::Str(s) => v.visit_borrowed_str(s),
            Yaml::Seq(items) => v.visit_seq(SeqDe(items.iter())),
            Yaml::Map(entries) => v.visit_map(MapDe {
                iter: entries.iter(),
                value: None,
            }),
        };
        place(r, n.pos)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Yaml::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == SP_MARKER {
            place(v.visit_seq(SpSeq::new(self.0, false)), self.0.pos)
        } else {
            v.visit_newtype_struct(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let n = self.0;
        let r = match &n.value {
            Yaml::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
            Yaml::Map(entries) if entries.len() == 1 => {
                v.visit_enum(EnumDe(&entries[0].0, &entries[0].1))
            }
            _ => Err(de::Error::custom(format!(
                "expected a name or a one-key map, found {}",
                n.type_name()
            ))),
        };
        place(r, n.pos)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // YAML `5` is a fine value for a float key.
        match self.0.value {
            Yaml::Int(i) => place(v.visit_f64(i as f64), self.0.pos),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // `type: 404` or `cases: {1: high}`: a scalar reads as its text where text is wanted.
        match &self.0.value {
            Yaml::Int(_) | Yaml::Float(_) | Yaml::Bool(_) => {
                place(v.visit_string(self.0.scalar_text()), self.0.pos)
            }
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_string(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 char
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// What [`Sp`] reads from [`NodeDe`]/[`KeyDe`]: the node's position as `(line, col, offset)`,
/// then its value (read as a mapping key when `as_key`).
struct SpSeq<'a> {
    node: Option<&'a Node>,
    pos_sent: bool,
    as_key: bool,
}

impl<'a> SpSeq<'a> {
    fn new(node: &'a Node, as_key: bool) -> Self {
        SpSeq {
            node: Some(node),
            pos_sent: false,
            as_key,
        }
    }
}

impl<'de> SeqAccess<'de> for SpSeq<'de> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(n) = self.node else { return Ok(None) };
        if !self.pos_sent {
            self.pos_sent = true;
            let p = n.pos;
            let tuple = vec![u64::from(p.line), u64::from(p.col), p.offset as u64];
            return seed
                .deserialize(de::value::SeqDeserializer::new(tuple.into_iter()))
                .map(Some);
        }
        self.node = None;
        if self.as_key {
            seed.deserialize(KeyDe(n)).map(Some)
        } else {
            seed.deserialize(NodeDe(n)).map(Some)
        }
    }
}

struct SeqDe<'a>(std::slice::Iter<'a, Node>);

impl<'de> SeqAccess<'de> for SeqDe<'de> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.0.next() {
            Some(n) => place(seed.deserialize(NodeDe(n)), n.pos).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for MapDe<'de> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                place(seed.deserialize(KeyDe(k)), k.pos).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value without key"))?;
        place(seed.deserialize(NodeDe(v)), v.pos)
    }
}

/// Mapping keys: scalars read as strings when a string is wanted (`1: a` in `cases`).
struct KeyDe<'a>(&'a Node);

impl<'de> de::Deserializer<'de> for KeyDe<'de> {
    type Error = DeError;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        NodeDe(self.0).deserialize_any(v)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Yaml::Str(s) => v.visit_borrowed_str(s),
            Yaml::Seq(_) | Yaml::Map(_) => Err(de::Error::custom("a key must be a scalar")),
            _ => v.visit_string(self.0.scalar_text()),
        }
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_string(v)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_string(v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == SP_MARKER {
            v.visit_seq(SpSeq::new(self.0, true))
        } else {
            v.visit_newtype_struct(self)
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map struct enum ignored_any
    }
}

struct EnumDe<'a>(&'a Node, &'a Node);

impl<'de> de::EnumAccess<'de> for EnumDe<'de> {
    type Error = DeError;
    type Variant = NodeDe<'de>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'de>), DeError> {
        let v = place(seed.deserialize(KeyDe(self.0)), self.0.pos)?;
        Ok((v, NodeDe(self.1)))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'de> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, v)
    }
}

/// A mapping whose keys keep their positions and whose order is the file's order
/// (transform fields are evaluated in the order written).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpMap<V>(pub Vec<(Sp<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SpMap<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = SpMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<SpMap<V>, A::Error> {
                let mut out: Vec<(Sp<String>, V)> = Vec::new();
                while let Some(k) = a.next_key::<Sp<String>>()? {
                    if out.iter().any(|(e, _)| e.value == k.value) {
                        return Err(de::Error::custom(format!("duplicate key `{}`", k.value)));
                    }
                    out.push((k, a.next_value()?));
                }
                Ok(SpMap(out))
            }
            fn visit_unit<E>(self) -> Result<SpMap<V>, E> {
                Ok(SpMap(Vec::new()))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for SpMap<V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_of_{}", V::schema_name()).into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let v = g.subschema_for::<V>();
        schemars::json_schema!({ "type": "object", "additionalProperties": v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        filter: Option<Sp<String>>,
        n: Option<Sp<u32>>,
        m: Option<SpMap<Sp<String>>>,
    }

    #[test]
    fn positions_reach_the_model() {
        let text = "filter: msg.x > 1\nm:\n  a: '\"x\"'\n  b: 2\n";
        let n = parse(text).unwrap();
        let t: T = from_node(&n).unwrap();
        let f = t.filter.unwrap();
        assert_eq!((f.pos.line, f.pos.col, f.pos.offset), (1, 9, 8));
        let m = t.m.unwrap();
        assert_eq!(m.0[0].0.value, "a");
        assert_eq!((m.0[0].0.pos.line, m.0[0].0.pos.col), (3, 3));
        assert_eq!(
            m.0[1].1.value, "2",
            "a YAML integer reads as a string where a string is wanted"
        );
    }

    #[test]
    fn unknown_key_is_placed_and_hinted() {
        let n = parse("n: 1\nfitler: x\n").unwrap();
        let e = from_node::<T>(&n).unwrap_err();
        assert_eq!(e.message, "unknown key `fitler`");
        assert_eq!(e.pos.map(|p| (p.line, p.col)), Some((2, 1)));
        assert_eq!(e.hint.as_deref(), Some("did you mean `filter`?"));
    }

    #[test]
    fn wrong_type_is_placed_at_the_value() {
        let n = parse("n: -3\n").unwrap();
        let e = from_node::<T>(&n).unwrap_err();
        assert_eq!(e.pos.map(|p| (p.line, p.col)), Some((1, 4)), "{e:?}");
    }

    #[test]
    fn billion_laughs_is_rejected() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let started = std::time::Instant::now();
        let e = parse(&text).unwrap_err();
        assert!(started.elapsed().as_secs() < 5);
        assert!(e.1.contains("YAML bomb"), "{}", e.1);
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let text = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse(&text).unwrap_err();
        assert!(e.1.contains("too deep"), "{}", e.1);
    }

    #[test]
    fn a_large_plain_file_is_no_bomb() {
        // 30,000 devices of 8 values each: past the fixed budget, within the text's.
        let mut text = String::from("devices:\n");
        for i in 0..30_000 {
            text.push_str(&format!(
                "  - {{id: pump-{i}, type: pump, attributes: {{rated: 10.0, max: 80.0}}}}\n"
            ));
        }
        let n = parse(&text).unwrap();
        let Yaml::Map(m) = &n.value else {
            panic!("not a map")
        };
        let Yaml::Seq(devices) = &m[0].1.value else {
            panic!("not a list")
        };
        assert_eq!(devices.len(), 30_000);
    }
}

/// Where, in the file, a position inside a scalar's value lies: `vline`/`vcol` (1-based) count
/// in the value as the YAML parser produced it; `start` is the scalar's position (for quoted
/// scalars, the opening quote; for block scalars, the first content character).
///
/// Literal block scalars (`|`) keep lines, so value line n is file line `start.line + n - 1` at
/// the block's indentation. Plain and quoted scalars fold line breaks into spaces, so value line
/// 1 is walked across the file lines it was folded from.
pub fn pos_in_scalar(text: &str, start: Pos, vline: usize, vcol: usize) -> Pos {
    let at = |line: u32, col: u32| Pos {
        line,
        col,
        offset: offset_of(text, line, col),
    };
    if start.line == 0 {
        return Pos {
            line: 1,
            col: 1,
            offset: 0,
        };
    }
    if vline > 1 {
        return at(start.line + (vline as u32 - 1), start.col + vcol as u32 - 1);
    }
    let quoted = text
        .get(start.offset..)
        .is_some_and(|t| t.starts_with(['"', '\'']));
    let mut line = start.line;
    let mut col = start.col + u32::from(quoted);
    let mut remaining = vcol.saturating_sub(1);
    let mut line_text: &str = text
        .get(offset_of(text, line, col)..)
        .map_or("", |t| t.split('\n').next().unwrap_or(""));
    loop {
        let seg = line_text.trim_end().chars().count();
        if remaining <= seg {
            return at(line, col + remaining as u32);
        }
        remaining -= seg + 1;
        line += 1;
        let Some(next) = text.split('\n').nth(line as usize - 1) else {
            return at(line - 1, col + seg as u32);
        };
        let indent = next.chars().take_while(|c| *c == ' ').count();
        col = indent as u32 + 1;
        line_text = &next[indent..];
    }
}

#[cfg(test)]
mod scalar_pos_tests {
    use super::*;

    fn value_pos(text: &str, key: &str, vline: usize, vcol: usize) -> (u32, u32) {
        let root = parse(text).unwrap();
        let p = pos_in_scalar(text, root.get(key).unwrap().pos, vline, vcol);
        (p.line, p.col)
    }

    #[test]
    fn plain_quoted_and_block_scalars() {
        let text = "a: msg.x > oops\nb: \"msg.y + oops\"\nc: |\n  let x = 1;\n  x + oops\nd: msg.a +\n  oops\n";
        assert_eq!(value_pos(text, "a", 1, 9), (1, 12));
        assert_eq!(value_pos(text, "b", 1, 9), (2, 13));
        assert_eq!(value_pos(text, "c", 2, 5), (5, 7));
        assert_eq!(value_pos(text, "d", 1, 9), (7, 3));
    }
}
