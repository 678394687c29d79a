//! `rulechain new chain NAME`: writes a commented chain and its tests into the rules directory,
//! a start that validates and whose tests pass, to be edited into the real thing.

use std::path::{Path, PathBuf};

/// The chain's file.
fn chain(name: &str, type_: &str) -> String {
    format!(
        r#"# yaml-language-server: $schema=../schemas/chain.schema.json
# {name}: what it watches and what it does. A new chain from `rulechain new chain`: edit the
# filter, the alarm and who is told; `rulechain test` runs {name}.test.yaml beside it.
chain: {name}
description: MAJOR when a device's temperature stays over its limit for 30 s; cleared below it.
on:
  kind: telemetry                  # telemetry, attributes, status, rpc_response
  when: msg.temperature != ()      # only messages that carry the field
nodes:
  - id: check
    # `attr` is the device's attributes (devices file, its attributes topic, the API), with a
    # default for devices that have none.
    filter: msg.temperature > (attr.max_temp ?? 80.0)
    for: 30s                       # true for this long, on every message, before it passes
    else: clear
  - id: raise
    alarm:
      type: {type_}
      severity: MAJOR
      message: "${{meta.device}} at ${{msg.temperature}}"
  - id: tell
    notify: [ops]                  # channels under `channels:` in the config (docs/alarms.md)
    next: []
  - id: clear
    alarm: {{ type: {type_}, action: clear }}
"#
    )
}

/// Its tests.
fn tests(name: &str, type_: &str) -> String {
    format!(
        r#"# yaml-language-server: $schema=../schemas/test.schema.json
# The tests of {name}.yaml: messages on a virtual clock, and what must (or must not) happen.
devices:
  - id: dev-1
    attributes: {{ max_temp: 80.0 }}
cases:
  - name: 30 s over the limit raises the alarm once and tells ops; back under clears it
    input:
      - {{ device: dev-1, at: 0s, data: {{ temperature: 85.0 }} }}
      - {{ device: dev-1, at: 31s, data: {{ temperature: 86.0 }} }}
      - {{ device: dev-1, at: 40s, data: {{ temperature: 70.0 }} }}
    expect:
      - {{ event: alarm, at: 30s, type: {type_}, transition: created, severity: MAJOR, message: "dev-1 at 85.0" }}
      - {{ event: notify, at: 30s, channel: ops }}
      - {{ event: alarm, at: 40s, transition: cleared }}

  - name: a short excursion raises nothing
    input:
      - {{ device: dev-1, at: 0s, data: {{ temperature: 85.0 }} }}
      - {{ device: dev-1, at: 10s, data: {{ temperature: 70.0 }} }}
    expect_none: [alarm, notify]
"#
    )
}

/// The alarm type a chain name suggests: `cold-room` → `ColdRoom`.
fn alarm_type(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// Runs `new chain NAME` into `dir`.
pub fn chain_files(name: &str, dir: &Path) -> i32 {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !ok {
        eprintln!(
            "error: `{name}` is not a chain name: lowercase letters, digits, `-` and `_`, starting with a letter (e.g. `cold-room`)"
        );
        return super::EXIT_USAGE;
    }
    let files: [(PathBuf, String); 2] = [
        (
            dir.join(format!("{name}.yaml")),
            chain(name, &alarm_type(name)),
        ),
        (
            dir.join(format!("{name}.test.yaml")),
            tests(name, &alarm_type(name)),
        ),
    ];
    for (p, _) in &files {
        if p.exists() {
            eprintln!("error: {} exists already: nothing was written", p.display());
            return super::EXIT_USAGE;
        }
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return super::EXIT_USAGE;
    }
    for (p, text) in &files {
        if let Err(e) = std::fs::write(p, text) {
            eprintln!("error: cannot write {}: {e}", p.display());
            return super::EXIT_USAGE;
        }
        println!("wrote {}", p.display());
    }
    println!(
        "check them: rulechain validate {0} && rulechain test {0}",
        dir.display()
    );
    super::EXIT_OK
}
