//! A JSON value whose strings are templates (a webhook's `body_json`): rendering fills every
//! string's `${}` holes and builds the JSON from the results, so a quote, a backslash or a
//! newline in a device name or a message is escaped as JSON requires, never pasted into text.

use rhai::Engine;
use serde_json::Value;

use super::{CompileError, Runtime, Template, Vars};

/// A compiled JSON template.
#[derive(Clone)]
pub enum JsonTemplate {
    /// A string with holes (rendered as a string).
    Text(Template),
    /// A number, a boolean or null: as it is.
    Value(Value),
    /// An object, its keys in order.
    Object(Vec<(String, JsonTemplate)>),
    /// An array.
    Array(Vec<JsonTemplate>),
}

impl JsonTemplate {
    /// Compiles every string of `v`; an error names where (`text`, `blocks[0].text`).
    pub fn compile(engine: &Engine, v: &Value) -> Result<JsonTemplate, (String, CompileError)> {
        fn go(
            engine: &Engine,
            v: &Value,
            at: &str,
        ) -> Result<JsonTemplate, (String, CompileError)> {
            Ok(match v {
                Value::String(s) => JsonTemplate::Text(
                    Template::compile(engine, s).map_err(|e| (at.to_string(), e))?,
                ),
                Value::Object(m) => JsonTemplate::Object(
                    m.iter()
                        .map(|(k, v)| {
                            let at = if at.is_empty() {
                                k.clone()
                            } else {
                                format!("{at}.{k}")
                            };
                            Ok((k.clone(), go(engine, v, &at)?))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Value::Array(a) => JsonTemplate::Array(
                    a.iter()
                        .enumerate()
                        .map(|(i, v)| go(engine, v, &format!("{at}[{i}]")))
                        .collect::<Result<_, _>>()?,
                ),
                other => JsonTemplate::Value(other.clone()),
            })
        }
        go(engine, v, "")
    }

    /// The JSON value, every template rendered.
    pub fn render(&self, rt: &mut Runtime, vars: &mut Vars) -> Result<Value, String> {
        Ok(match self {
            JsonTemplate::Text(t) => Value::String(t.render(rt, vars)?),
            JsonTemplate::Value(v) => v.clone(),
            JsonTemplate::Object(m) => {
                let mut o = serde_json::Map::new();
                for (k, v) in m {
                    o.insert(k.clone(), v.render(rt, vars)?);
                }
                Value::Object(o)
            }
            JsonTemplate::Array(a) => Value::Array(
                a.iter()
                    .map(|v| v.render(rt, vars))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::{Dynamic, Map};
    use std::sync::Arc;

    #[test]
    fn values_with_quotes_and_newlines_make_valid_json() {
        let engine = Arc::new(crate::script::new_engine());
        let spec = serde_json::json!({
            "text": "${meta.device}: ${msg.note}",
            "blocks": [{"type": "section", "n": 3, "ok": true}],
        });
        let t = JsonTemplate::compile(&engine, &spec).unwrap();
        let mut msg = Map::new();
        msg.insert("note".into(), "he said \"stop\"\nthen \\left".into());
        let mut meta = Map::new();
        meta.insert("device".into(), "pump \"7\"".into());
        let mut vars = Vars {
            msg: Dynamic::from_map(msg),
            attr: Dynamic::from_map(Map::new()),
            meta: Dynamic::from_map(meta),
        };
        let mut rt = Runtime::new(engine.clone());
        let v = t.render(&mut rt, &mut vars).unwrap();
        let text = v.to_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["text"], "pump \"7\": he said \"stop\"\nthen \\left");
        assert_eq!(back["blocks"][0]["n"], 3);
        assert_eq!(back["blocks"][0]["ok"], true);
        // An error names where it is.
        let bad = serde_json::json!({"blocks": [{"text": "${msg.x"}]});
        match JsonTemplate::compile(&engine, &bad) {
            Err((at, _)) => assert_eq!(at, "blocks[0].text"),
            Ok(_) => panic!("a bad template compiled"),
        }
    }
}
