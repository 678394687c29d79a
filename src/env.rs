//! `${NAME}` and `${NAME:-default}` in the config's string values, from the environment, so
//! secrets stay out of files. Only names written as environment variables are (`[A-Z_][A-Z0-9_]*`):
//! `${msg.alarm.type}` in a channel template is a template hole and is left alone (a template
//! cannot name an uppercase variable: only `msg`, `attr` and `meta` exist).
//!
//! Expanded values are never printed: a diagnostic names the variable, not its value.

use crate::yaml::{Node, Pos, Yaml};

/// Expands every string in a config tree. Returns the unset variables (name, position).
pub fn expand_tree(node: &mut Node, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<(String, Pos)> {
    let mut missing = Vec::new();
    walk(node, lookup, &mut missing);
    missing
}

fn walk(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<(String, Pos)>,
) {
    match &mut node.value {
        Yaml::Str(s) => match expand(s, lookup) {
            Ok(Some(new)) => *s = new,
            Ok(None) => {}
            Err(names) => missing.extend(names.into_iter().map(|n| (n, node.pos))),
        },
        Yaml::Seq(items) => items.iter_mut().for_each(|i| walk(i, lookup, missing)),
        Yaml::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, v)| walk(v, lookup, missing)),
        _ => {}
    }
}

fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Expands one string: `Ok(None)` when it holds no variable, `Err(names)` for unset ones.
pub fn expand(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Vec<String>> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if is_env_name(name) {
            changed = true;
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => missing.push(name.to_string()),
            }
        } else {
            out.push_str(&rest[i..i + 2 + end + 1]);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(changed.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SMTP_PASSWORD" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_env_names_and_leaves_template_holes() {
        assert_eq!(
            expand("pw=${SMTP_PASSWORD}", &env),
            Ok(Some("pw=s3cret".into()))
        );
        assert_eq!(
            expand("${HOST:-127.0.0.1}:1883", &env),
            Ok(Some("127.0.0.1:1883".into()))
        );
        assert_eq!(
            expand("${EMPTY:-fallback}", &env),
            Ok(Some("fallback".into()))
        );
        assert_eq!(
            expand("[${msg.alarm.severity}] ${meta.device}", &env),
            Ok(None)
        );
        assert_eq!(expand("plain", &env), Ok(None));
        assert_eq!(
            expand("${NOPE} and ${ALSO_NOPE}", &env),
            Err(vec!["NOPE".into(), "ALSO_NOPE".into()])
        );
        assert_eq!(expand("${UNCLOSED", &env), Ok(None));
    }
}
