//! The value types the rule files share: an expression's source ([`ExprSrc`]), one id or a
//! list of ids ([`IdList`]), and a kind key written with no value (`- influx:`, [`present`]).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::yaml::Sp;

/// A Rhai expression. In YAML a string is Rhai source (`msg.current > 10`); a YAML number or
/// boolean is that literal. A Rhai string literal needs inner quotes: `'"ok"'`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprSrc {
    /// The Rhai source.
    pub text: String,
    /// True when the YAML value was a string (its position is inside a string scalar).
    pub from_string: bool,
}

impl<'de> Deserialize<'de> for ExprSrc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ExprSrc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Rhai expression (a string), a number or a boolean")
            }
            fn visit_str<E>(self, s: &str) -> Result<ExprSrc, E> {
                Ok(ExprSrc {
                    text: s.to_string(),
                    from_string: true,
                })
            }
            fn visit_bool<E>(self, b: bool) -> Result<ExprSrc, E> {
                Ok(ExprSrc {
                    text: b.to_string(),
                    from_string: false,
                })
            }
            fn visit_i64<E>(self, i: i64) -> Result<ExprSrc, E> {
                Ok(ExprSrc {
                    text: i.to_string(),
                    from_string: false,
                })
            }
            fn visit_u64<E>(self, i: u64) -> Result<ExprSrc, E> {
                Ok(ExprSrc {
                    text: i.to_string(),
                    from_string: false,
                })
            }
            fn visit_f64<E>(self, f: f64) -> Result<ExprSrc, E> {
                // Rhai needs a decimal point to read a float.
                let mut t = format!("{f:?}");
                if !t.contains(['.', 'e', 'E']) {
                    t.push_str(".0");
                }
                Ok(ExprSrc {
                    text: t,
                    from_string: false,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ExprSrc {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Expr".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Rhai expression over `msg`, `attr` and `meta` (a string), or a literal number or boolean. String literals need inner quotes: '\"ok\"'.",
            "type": ["string", "number", "boolean"]
        })
    }
}

/// One id or a list of ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdList(pub Vec<Sp<String>>);

impl<'de> Deserialize<'de> for IdList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not `#[serde(untagged)]`: it buffers the value and loses positions.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IdList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E>(self, s: &str) -> Result<IdList, E> {
                Ok(IdList(vec![Sp::unplaced(s.to_string())]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<IdList, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<Sp<String>>()? {
                    v.push(s);
                }
                Ok(IdList(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for IdList {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdList".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One name, or a list of names.",
            "anyOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }]
        })
    }
}

/// Deserializes a kind key that may be written with no value (`- influx:`) as its defaults.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<Option<Sp<T>>, D::Error> {
    let v: Sp<Option<T>> = Deserialize::deserialize(d)?;
    Ok(Some(Sp {
        value: v.value.unwrap_or_default(),
        pos: v.pos,
    }))
}
