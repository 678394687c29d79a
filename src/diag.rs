//! Diagnostics: every problem the loader, the schema checks and the compiler find, with the file
//! position it concerns, printed as `path:line:col: error: text` plus a snippet, or as JSON.
//!
//! Loading never stops at the first problem: functions that check things push into a
//! [`Diagnostics`] and carry on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::yaml::Pos;

/// How bad a problem is. Errors make `validate` exit 1 and stop the rules from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file loads, but probably does not do what its author meant.
    Warning,
}

/// One problem in one file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diagnostic {
    /// The file, as given on the command line.
    pub path: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (characters).
    pub column: u32,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A source file's text, shared by the diagnostics that point into it (for snippets).
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as the user gave it.
    pub path: PathBuf,
    /// The whole text.
    pub text: Arc<str>,
}

impl Source {
    /// A source from a path and its text.
    pub fn new(path: &Path, text: impl Into<Arc<str>>) -> Self {
        Source {
            path: path.to_path_buf(),
            text: text.into(),
        }
    }

    /// The path as displayed in diagnostics.
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

/// The problems found so far, across files.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<(Diagnostic, Option<Source>)>,
    /// A file or directory could not be read at all (missing, no permission): an I/O error,
    /// exit code 2, not a finding in what was read.
    unreadable: bool,
}

impl Diagnostics {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an error at `pos` in `src`.
    pub fn error(&mut self, src: &Source, pos: Pos, message: impl Into<String>) -> &mut Diagnostic {
        self.push(src, pos, Severity::Error, message.into())
    }

    /// Adds a warning at `pos` in `src`.
    pub fn warning(
        &mut self,
        src: &Source,
        pos: Pos,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.push(src, pos, Severity::Warning, message.into())
    }

    /// Adds an error for a file or directory that cannot be read at all (see
    /// [`Diagnostics::unreadable`]).
    pub fn unreadable_error(&mut self, path: &Path, message: impl Into<String>) {
        self.unreadable = true;
        self.file_error(path, message);
    }

    /// Whether a file or directory could not be read: the commands exit 2 then, as for any
    /// I/O error, rather than 1 for findings.
    pub fn unreadable(&self) -> bool {
        self.unreadable
    }

    /// Adds an error about a whole file (it is not a rule file, too large, not UTF-8).
    pub fn file_error(&mut self, path: &Path, message: impl Into<String>) {
        self.items.push((
            Diagnostic {
                path: path.display().to_string(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: message.into(),
                hint: None,
            },
            None,
        ));
    }

    fn push(
        &mut self,
        src: &Source,
        pos: Pos,
        severity: Severity,
        message: String,
    ) -> &mut Diagnostic {
        let pos = if pos.line == 0 {
            Pos {
                line: 1,
                col: 1,
                offset: 0,
            }
        } else {
            pos
        };
        self.items.push((
            Diagnostic {
                path: src.display(),
                line: pos.line,
                column: pos.col.max(1),
                severity,
                message,
                hint: None,
            },
            Some(src.clone()),
        ));
        &mut self.items.last_mut().expect("just pushed").0
    }

    /// Forgets the problems reported at these positions (a value whose `${VAR}` is unset is
    /// reported once for that, not again for what it would not read as).
    pub fn forget_at(&mut self, positions: &[Pos]) {
        self.items.retain(|(d, _)| {
            !positions
                .iter()
                .any(|p| p.line == d.line && p.col == d.column)
        });
    }

    /// Moves every problem of `other` into `self`.
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    /// True when any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.items
            .iter()
            .any(|(d, _)| d.severity == Severity::Error)
    }

    /// The number of errors.
    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|(d, _)| d.severity == Severity::Error)
            .count()
    }

    /// Errors and warnings as printed: a problem found twice (a file checked as `--config` and
    /// as a path) counts once.
    pub fn printed_counts(&self) -> (usize, usize) {
        let shown = self.sorted();
        let errors = shown
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        (errors, shown.len() - errors)
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The problems, in file order (path, then position) and without repeats.
    pub fn sorted(&self) -> Vec<&Diagnostic> {
        let mut v: Vec<&Diagnostic> = self.items.iter().map(|(d, _)| d).collect();
        v.sort_by(|a, b| {
            (&a.path, a.line, a.column, a.severity).cmp(&(&b.path, b.line, b.column, b.severity))
        });
        // A check that runs twice (the config is read for itself and for the chains) reports
        // once, wherever the copies landed in the order.
        let mut out: Vec<&Diagnostic> = Vec::with_capacity(v.len());
        for d in v {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// Every problem in the rustc-like text form, with a snippet of the line it points at.
    pub fn render_text(&self) -> String {
        self.render_each()
            .into_iter()
            .map(|mut b| {
                b.push('\n');
                b
            })
            .collect()
    }

    /// Each problem as its own text block (its line, snippet and hint, without the last line
    /// end), in the order and with the duplicates left out as [`Diagnostics::render_text`].
    pub fn render_each(&self) -> Vec<String> {
        let mut items: Vec<&(Diagnostic, Option<Source>)> = self.items.iter().collect();
        items.sort_by(|(a, _), (b, _)| {
            (&a.path, a.line, a.column, a.severity).cmp(&(&b.path, b.line, b.column, b.severity))
        });
        let mut unique: Vec<&(Diagnostic, Option<Source>)> = Vec::with_capacity(items.len());
        for it in items {
            if !unique.iter().any(|u| u.0 == it.0) {
                unique.push(it);
            }
        }
        let items = unique;
        let mut blocks = Vec::with_capacity(items.len());
        for (d, src) in items {
            let mut out = String::new();
            let sev = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let _ = writeln!(
                out,
                "{}:{}:{}: {sev}: {}",
                d.path, d.line, d.column, d.message
            );
            if let Some(src) = src {
                if let Some(line) = src.text.lines().nth(d.line as usize - 1) {
                    let num = d.line.to_string();
                    let pad = " ".repeat(num.len());
                    // Long lines are cropped to a window around the column.
                    let col = d.column as usize - 1;
                    let skip = col.saturating_sub(60);
                    let line: String = line.chars().skip(skip).take(120).collect();
                    let caret_pad: String = line
                        .chars()
                        .take(col - skip)
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    let _ = writeln!(out, "{pad} |");
                    let _ = writeln!(out, "{num} | {line}");
                    let _ = writeln!(out, "{pad} | {caret_pad}^");
                }
            }
            if let Some(h) = &d.hint {
                let _ = writeln!(out, "  = hint: {h}");
            }
            out.truncate(out.trim_end_matches('\n').len());
            blocks.push(out);
        }
        blocks
    }

    /// Every problem as one JSON array (the `validate --format json` contract).
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(&self.sorted()).unwrap_or_else(|_| "[]".into())
    }
}

impl Diagnostic {
    /// Adds a hint to this diagnostic.
    pub fn hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_has_position_snippet_and_hint() {
        let src = Source::new(
            Path::new("rules/a.yaml"),
            "chain: a\nnodes:\n  - fitler: x\n",
        );
        let mut d = Diagnostics::new();
        d.error(
            &src,
            Pos {
                line: 3,
                col: 5,
                offset: 0,
            },
            "unknown key `fitler`",
        )
        .hint("did you mean `filter`?");
        let text = d.render_text();
        assert!(
            text.starts_with("rules/a.yaml:3:5: error: unknown key `fitler`\n"),
            "{text}"
        );
        assert!(text.contains("3 |   - fitler: x\n  |     ^\n"), "{text}");
        assert!(text.contains("= hint: did you mean `filter`?"));
        let json: serde_json::Value = serde_json::from_str(&d.render_json()).unwrap();
        assert_eq!(json[0]["line"], 3);
        assert_eq!(json[0]["column"], 5);
        assert_eq!(json[0]["severity"], "error");
        assert_eq!(json[0]["hint"], "did you mean `filter`?");
    }
}
