//! InfluxDB line protocol, encoded exactly:
//!
//! - measurement: `\`, `,`, ` ` escaped with `\`;
//! - tag keys, tag values, field keys: `\`, `,`, `=`, ` ` escaped with `\`;
//! - string field values: in double quotes, `\` and `"` escaped with `\`;
//! - line breaks (`\n`, `\r`) cannot appear raw anywhere in a line: they are written as the two
//!   characters `\n` / `\r` (as Telegraf does), so one point is always one line;
//! - numbers are floats in their shortest round-trip form (`2`, `2.5`: never `2i`, so one device
//!   sending 2 and another 2.5 do not conflict); booleans `true`/`false`;
//! - tags and fields sorted by key; timestamp in nanoseconds.
//!
//! NaN and infinite values cannot be written; [`Point::line`] leaves them out and names them.

use std::fmt::Write as _;

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A float (every number).
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
}

/// One point.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Point {
    /// The measurement.
    pub measurement: String,
    /// Tags (sorted on write).
    pub tags: Vec<(String, String)>,
    /// Fields (sorted on write).
    pub fields: Vec<(String, FieldValue)>,
    /// Nanoseconds since the epoch.
    pub ts_ns: i64,
}

fn escape(out: &mut String, s: &str, extra: &[char]) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if c == ',' || c == ' ' || extra.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

impl Point {
    /// The line (no trailing newline), and the names of fields left out because they are not
    /// finite. `None` when no field is left: such a point is not written.
    pub fn line(&self) -> (Option<String>, Vec<String>) {
        let mut skipped = Vec::new();
        let mut fields: Vec<&(String, FieldValue)> = self
            .fields
            .iter()
            .filter(|(k, v)| match v {
                FieldValue::Float(f) if !f.is_finite() => {
                    skipped.push(k.clone());
                    false
                }
                _ => true,
            })
            .collect();
        if fields.is_empty() {
            return (None, skipped);
        }
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tags: Vec<&(String, String)> = self.tags.iter().filter(|(k, v)| !k.is_empty() && !v.is_empty()).collect();
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::with_capacity(64);
        escape(&mut out, &self.measurement, &[]);
        for (k, v) in tags {
            out.push(',');
            escape(&mut out, k, &['=']);
            out.push('=');
            escape(&mut out, v, &['=']);
        }
        for (i, (k, v)) in fields.into_iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            escape(&mut out, k, &['=']);
            out.push('=');
            match v {
                FieldValue::Float(f) => {
                    let _ = write!(out, "{f}");
                }
                FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                FieldValue::Str(s) => {
                    out.push('"');
                    for c in s.chars() {
                        match c {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                }
            }
        }
        let _ = write!(out, " {}", self.ts_ns);
        (Some(out), skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_exactly() {
        let p = Point {
            measurement: "my meas,x".into(),
            tags: vec![("site".into(), "a b=c,d".into()), ("device".into(), "pump-3".into())],
            fields: vec![
                ("temp".into(), FieldValue::Float(2.0)),
                ("a=b".into(), FieldValue::Float(2.5)),
                ("ok".into(), FieldValue::Bool(true)),
                ("note".into(), FieldValue::Str("say \"hi\"\\\nbye".into())),
                ("bad".into(), FieldValue::Float(f64::NAN)),
            ],
            ts_ns: 1_710_000_000_000_000_000,
        };
        let (line, skipped) = p.line();
        assert_eq!(
            line.unwrap(),
            "my\\ meas\\,x,device=pump-3,site=a\\ b\\=c\\,d a\\=b=2.5,note=\"say \\\"hi\\\"\\\\\\nbye\",ok=true,temp=2 1710000000000000000"
        );
        assert_eq!(skipped, vec!["bad".to_string()]);
    }

    #[test]
    fn no_finite_field_no_point() {
        let p = Point { measurement: "m".into(), fields: vec![("x".into(), FieldValue::Float(f64::INFINITY))], ..Point::default() };
        assert_eq!(p.line(), (None, vec!["x".to_string()]));
    }
}
