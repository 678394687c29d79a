//! A [`Report`] as text (for a terminal) or markdown (for a pull-request comment).

use std::fmt::Write;

use super::{AlarmChange, Episode, Report};

fn when(ms: i64) -> String {
    crate::message::format_rfc3339(ms)
}

fn span(e: &Episode) -> String {
    match e.end {
        Some(end) => format!(
            "{} for {}",
            when(e.start),
            crate::duration::format((end - e.start).max(0))
        ),
        None => format!("{} (still active at the end)", when(e.start)),
    }
}

fn alarm_line(a: &AlarmChange) -> String {
    match (&a.base, &a.candidate) {
        (None, Some(c)) => format!(
            "{} {} on {}: {}",
            c.severity.as_str(),
            a.type_,
            a.device,
            span(c)
        ),
        (Some(b), None) => format!(
            "{} {} on {}: {}",
            b.severity.as_str(),
            a.type_,
            a.device,
            span(b)
        ),
        (Some(b), Some(c)) => {
            let mut parts = Vec::new();
            if b.severity != c.severity {
                parts.push(format!(
                    "severity {} → {}",
                    b.severity.as_str(),
                    c.severity.as_str()
                ));
            }
            if let Some(s) = a.start_shift_ms {
                let sign = if s < 0 { "-" } else { "+" };
                parts.push(format!("starts {sign}{}", crate::duration::format(s.abs())));
            }
            if a.changes.contains(&"duration") {
                let d = |e: &Episode| {
                    e.end.map_or("open".to_string(), |x| {
                        crate::duration::format((x - e.start).max(0))
                    })
                };
                parts.push(format!("lasts {} → {}", d(b), d(c)));
            }
            format!(
                "{} on {} ({}): {}",
                a.type_,
                a.device,
                when(b.start),
                parts.join(", ")
            )
        }
        (None, None) => String::new(),
    }
}

/// The examples to show, by kind and side (`base only`, `candidate only`), non-empty ones.
fn example_lists(r: &Report) -> Vec<(&'static str, &'static str, &[super::Example])> {
    r.examples
        .iter()
        .flat_map(|ex| {
            [
                (ex.kind, "base only", ex.only_base.as_slice()),
                (ex.kind, "candidate only", ex.only_candidate.as_slice()),
            ]
        })
        .filter(|(_, _, l)| !l.is_empty())
        .collect()
}

/// Alarms listed per section in text; the rest are counted.
const LISTED: usize = 20;
/// Alarm rows in markdown (a pull-request comment has a size limit).
const LISTED_MD: usize = 100;

/// A node's outcomes: `pass 4, else 5`; `none`; `absent` on a side without the node.
fn outcomes(m: &Option<super::Outcomes>) -> String {
    match m {
        None => "absent".to_string(),
        Some(m) if m.is_empty() => "none".to_string(),
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The report as text.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} messages replayed; alarms: {} on the base, {} on the candidate",
        r.messages, r.alarms.base, r.alarms.candidate
    );
    if r.equal {
        let _ = writeln!(o, "no difference: the candidate does what the base does");
        return o;
    }
    for (title, list) in [
        (
            "removed (the base raises them, the candidate does not)",
            &r.removed,
        ),
        (
            "added (the candidate raises them, the base does not)",
            &r.added,
        ),
        ("changed", &r.changed),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\nalarms {title}: {}", list.len());
        for a in list.iter().take(LISTED) {
            let _ = writeln!(o, "  - {}", alarm_line(a));
        }
        if list.len() > LISTED {
            let _ = writeln!(
                o,
                "  … and {} more (`--format json` lists every one)",
                list.len() - LISTED
            );
        }
    }
    if !r.effects.is_empty() {
        let _ = writeln!(o, "\neffects (base → candidate):");
        for e in &r.effects {
            let _ = writeln!(
                o,
                "  {:<10} {:<24} {} → {}",
                e.kind, e.chain, e.base, e.candidate
            );
        }
    }
    for (kind, side, list) in example_lists(r) {
        let _ = writeln!(o, "\nfirst {kind} {side}:");
        for e in list {
            let _ = writeln!(o, "  {} {} {}: {}", when(e.ts), e.chain, e.device, e.what);
        }
    }
    if !r.nodes.is_empty() {
        let _ = writeln!(o, "\nnodes whose outcomes differ (base → candidate):");
        for n in &r.nodes {
            let _ = writeln!(
                o,
                "  {}/{} ({}): {} → {}",
                n.chain,
                n.node,
                n.kind,
                outcomes(&n.base),
                outcomes(&n.candidate)
            );
        }
    }
    o
}

/// Text for a markdown table cell: `|` and line ends cannot break the table, markup shows as
/// typed.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('<', "&lt;")
        .replace('`', "\\`")
        .replace('*', "\\*")
        .replace('_', "\\_")
}

/// The report as markdown: a summary, and the alarms and effects as tables.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### rulechain diff\n");
    if r.equal {
        let _ = writeln!(
            o,
            "No difference over {} replayed messages: the candidate raises the same alarms as the base ({}).",
            r.messages, r.alarms.base
        );
        return o;
    }
    let _ = writeln!(
        o,
        "{} messages replayed. Alarms: **{}** on the base, **{}** on the candidate: **{} removed**, **{} added**, **{} changed**.\n",
        r.messages,
        r.alarms.base,
        r.alarms.candidate,
        r.removed.len(),
        r.added.len(),
        r.changed.len()
    );
    let rows: Vec<(&str, &AlarmChange)> = r
        .removed
        .iter()
        .map(|a| ("removed", a))
        .chain(r.added.iter().map(|a| ("added", a)))
        .chain(r.changed.iter().map(|a| ("changed", a)))
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(o, "| | alarm | device | chain | base | candidate |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
        let more = rows.len().saturating_sub(LISTED_MD);
        for (what, a) in rows.into_iter().take(LISTED_MD) {
            let side = |e: &Option<Episode>| {
                e.as_ref().map_or("–".to_string(), |e| {
                    cell(&format!("{} {}", e.severity.as_str(), span(e)))
                })
            };
            let _ = writeln!(
                o,
                "| {what} | {} | {} | {} | {} | {} |",
                cell(&a.type_),
                cell(&a.device),
                cell(&a.chain),
                side(&a.base),
                side(&a.candidate)
            );
        }
        if more > 0 {
            let _ = writeln!(
                o,
                "\n… and {more} more alarms (`rulechain diff --format json` lists every one)."
            );
        }
        let _ = writeln!(o);
    }
    if !r.effects.is_empty() {
        let _ = writeln!(o, "| effect | chain | base | candidate |");
        let _ = writeln!(o, "| --- | --- | ---: | ---: |");
        for e in &r.effects {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                e.kind,
                cell(&e.chain),
                e.base,
                e.candidate
            );
        }
        let _ = writeln!(o);
    }
    if !r.nodes.is_empty() {
        let _ = writeln!(
            o,
            "<details><summary>nodes whose outcomes differ</summary>\n"
        );
        let _ = writeln!(o, "| chain | node | kind | base | candidate |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
        for n in &r.nodes {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                cell(&n.chain),
                cell(&n.node),
                n.kind,
                outcomes(&n.base),
                outcomes(&n.candidate)
            );
        }
        let _ = writeln!(o, "\n</details>\n");
    }
    for (kind, side, list) in example_lists(r) {
        let _ = writeln!(o, "<details><summary>first {kind} {side}</summary>\n");
        for e in list {
            let _ = writeln!(
                o,
                "- {} {} {}: {}",
                when(e.ts),
                cell(&e.chain),
                cell(&e.device),
                cell(&e.what)
            );
        }
        let _ = writeln!(o, "\n</details>\n");
    }
    o
}
