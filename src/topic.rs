//! MQTT topics: patterns with `{name}` captures that turn a topic into a device and a kind, and
//! MQTT filter matching (`+`, `#`) for `on.topic`.

use crate::message::Kind;

/// A compiled topic pattern such as `site/{site}/device/{device}/{kind}`.
#[derive(Debug, Clone)]
pub struct TopicPattern {
    levels: Vec<Level>,
    kind: Option<Kind>,
    /// The pattern text.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Level {
    Lit(String),
    Capture(String),
}

/// A topic that matched a pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    /// `{device}`.
    pub device: String,
    /// From `{kind}` or the pattern's kind.
    pub kind: Kind,
    /// Other captures.
    pub captures: Vec<(String, String)>,
}

impl TopicPattern {
    /// Parses a pattern; `kind` applies when the pattern has no `{kind}` capture.
    pub fn parse(text: &str, kind: Option<Kind>) -> Result<TopicPattern, String> {
        let mut levels = Vec::new();
        for l in text.split('/') {
            if let Some(name) = l.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "bad capture `{l}`: use `{{name}}` with letters, digits and `_`"
                    ));
                }
                if levels.contains(&Level::Capture(name.to_string())) {
                    return Err(format!("capture `{{{name}}}` appears twice"));
                }
                levels.push(Level::Capture(name.to_string()));
            } else if l.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "bad level `{l}`: a level is literal text or one `{{name}}` capture"
                ));
            } else {
                levels.push(Level::Lit(l.to_string()));
            }
        }
        if !levels.contains(&Level::Capture("device".into())) {
            return Err("a topic pattern needs a `{device}` capture".into());
        }
        let has_kind = levels.contains(&Level::Capture("kind".into()));
        if !has_kind && kind.is_none() {
            return Err("a topic pattern needs a `{kind}` capture or a `kind:`".into());
        }
        Ok(TopicPattern {
            levels,
            kind,
            text: text.to_string(),
        })
    }

    /// The MQTT subscription filters that receive every topic this pattern matches, and no
    /// other kind's: `site/{site}/device/{device}/{kind}` → `site/+/device/+/telemetry`, … one
    /// per message kind (so the engine never receives the commands it sends).
    pub fn mqtt_filters(&self) -> Vec<String> {
        let kinds: &[&str] = if self.levels.contains(&Level::Capture("kind".into())) {
            &["telemetry", "attributes", "status", "rpc_response"]
        } else {
            &[""]
        };
        kinds
            .iter()
            .map(|k| {
                self.levels
                    .iter()
                    .map(|l| match l {
                        Level::Lit(s) => s.as_str(),
                        Level::Capture(c) if c == "kind" => k,
                        Level::Capture(_) => "+",
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect()
    }

    /// Matches a topic.
    pub fn matches(&self, topic: &str) -> Option<Matched> {
        let mut device = None;
        let mut kind = self.kind;
        let mut captures = Vec::new();
        let mut parts = topic.split('/');
        for l in &self.levels {
            let part = parts.next()?;
            match l {
                Level::Lit(s) if s == part => {}
                Level::Lit(_) => return None,
                Level::Capture(_) if part.is_empty() => return None,
                Level::Capture(name) if name == "device" => device = Some(part.to_string()),
                Level::Capture(name) if name == "kind" => kind = Some(Kind::parse(part)?),
                Level::Capture(name) => captures.push((name.clone(), part.to_string())),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Matched {
            device: device?,
            kind: kind?,
            captures,
        })
    }
}

/// Subscription filters for the topic patterns (duplicates removed).
pub fn mqtt_filters(patterns: &[TopicPattern]) -> Vec<String> {
    let mut f: Vec<String> = patterns
        .iter()
        .flat_map(TopicPattern::mqtt_filters)
        .collect();
    f.sort();
    f.dedup();
    f
}

/// Whether an MQTT topic filter (`a/+/c`, `a/#`) matches a topic.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // MQTT 3.1.1 §4.7.2: a filter that starts with a wildcard does not match a topic that starts
    // with `$` (`$SYS/…`); `$SYS/#` does. (rumqttc's `matches` refuses every `$` topic, even
    // for `$SYS/#`, so it is not used here.)
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(l)) if f == l => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// Checks an MQTT topic filter's syntax.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level and the last one".into());
        }
        if l.contains('+') && *l != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

/// The default RPC command topic: the source topic with its last level replaced by `command`,
/// or `device/{device}/command`.
pub fn default_command_topic(source: Option<&str>, device: &str) -> String {
    match source.and_then(|t| t.rsplit_once('/')) {
        Some((head, _)) => format!("{head}/command"),
        None => format!("device/{device}/command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_device_kind_and_site() {
        let p = TopicPattern::parse("site/{site}/device/{device}/{kind}", None).unwrap();
        let m = p.matches("site/a/device/pump-3/telemetry").unwrap();
        assert_eq!(m.device, "pump-3");
        assert_eq!(m.kind, Kind::Telemetry);
        assert_eq!(m.captures, vec![("site".to_string(), "a".to_string())]);
        assert!(p.matches("site/a/device/pump-3/weird").is_none());
        assert!(p.matches("site/a/device/pump-3/telemetry/x").is_none());
        assert!(TopicPattern::parse("x/{id}", None).is_err());
    }

    #[test]
    fn filters() {
        assert!(filter_matches(
            "site/+/device/+/telemetry",
            "site/a/device/p/telemetry"
        ));
        assert!(filter_matches("site/#", "site/a/b"));
        assert!(!filter_matches("site/+", "site/a/b"));
        assert!(!filter_matches("#", "$SYS/broker/uptime"));
        assert!(!filter_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(filter_matches("+/x", "a$/x"));
        assert!(check_filter("a/#/b").is_err());
        assert_eq!(
            default_command_topic(Some("site/a/device/p/telemetry"), "p"),
            "site/a/device/p/command"
        );
        assert_eq!(default_command_topic(None, "p"), "device/p/command");
    }
}
