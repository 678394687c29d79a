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

/// The config `init` writes: the embedded broker and the API on localhost, alarms to the log.
const INIT_CONFIG: &str = r#"# yaml-language-server: $schema=schemas/config.schema.json
# A rulechain project (from `rulechain init`). Every key is optional; docs/live.md lists them all.
embedded_broker:
  listen: 127.0.0.1:1883           # devices publish here: device/<id>/telemetry
http:
  listen: 127.0.0.1:8080           # the dashboard, the API, /metrics
rules: rules
devices: devices.yaml
state_dir: state                   # alarms, windows and holds survive restarts here
channels:
  ops:
    log: {}                        # alarms to the log; email, Slack, webhooks: docs/alarms.md
"#;

const INIT_DEVICES: &str = r#"# yaml-language-server: $schema=schemas/devices.schema.json
# The devices rules know by id: `attr.max_temp` in a rule is this attribute. Devices not listed
# here are learned from their first message.
devices:
  - id: dev-1
    type: sensor
    attributes: { max_temp: 80.0 }
"#;

/// A recording to replay with `dry-run`: dev-1 too hot for 40 s, then back.
fn init_recording() -> String {
    let t0 = 1_767_225_600_000i64;
    [
        (0, 72.0),
        (10, 81.5),
        (20, 84.0),
        (30, 85.5),
        (40, 86.0),
        (50, 83.0),
        (60, 76.0),
    ]
    .iter()
    .map(|(s, t)| {
        format!(
            "{{\"device\": \"dev-1\", \"ts\": {}, \"data\": {{\"temperature\": {t:.1}}}}}\n",
            t0 + s * 1000
        )
    })
    .collect()
}

const INIT_README: &str = r#"# A rulechain project

Made by `rulechain init`. Try, from this directory:

```sh
rulechain test                       # the chain's tests (rules/*.test.yaml)
rulechain dry-run --input recordings/high-temperature.jsonl   # what a recording would do
rulechain run                        # the engine: broker on 127.0.0.1:1883, dashboard on :8080
```

Then send a reading (any MQTT client; `mosquitto_pub` shown):

```sh
mosquitto_pub -t device/dev-1/telemetry -m '{"temperature": 85}'
```

Over 80 °C for 30 s raises the `HighTemperature` alarm (see the log and
http://127.0.0.1:8080/). Edit `rules/high-temperature.yaml`, then `rulechain validate` and
`rulechain test`: a running engine reloads the rules when they change.
"#;

/// Runs `init DIR`: a project a new user can run at once. Files already there are kept (and
/// named), so running it twice changes nothing.
pub fn init(dir: &Path) -> i32 {
    let files: Vec<(PathBuf, String)> = vec![
        (dir.join("rulechain.yaml"), INIT_CONFIG.to_string()),
        (dir.join("devices.yaml"), INIT_DEVICES.to_string()),
        (
            dir.join("rules/high-temperature.yaml"),
            chain("high-temperature", "HighTemperature"),
        ),
        (
            dir.join("rules/high-temperature.test.yaml"),
            tests("high-temperature", "HighTemperature"),
        ),
        (
            dir.join("recordings/high-temperature.jsonl"),
            init_recording(),
        ),
        (dir.join("README.md"), INIT_README.to_string()),
    ];
    for (p, text) in &files {
        if p.exists() {
            println!("kept {} (it exists)", p.display());
            continue;
        }
        let written = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(p, text));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", p.display());
            return super::EXIT_USAGE;
        }
        println!("wrote {}", p.display());
    }
    // The schemas the files name, for editors (kept up to date by `rulechain schema`).
    if !dir.join("schemas").exists() {
        let code = super::schema::run(&dir.join("schemas"));
        if code != super::EXIT_OK {
            return code;
        }
    }
    let cd = if dir == Path::new(".") {
        String::new()
    } else {
        format!("cd {} && ", dir.display())
    };
    println!("next: {cd}rulechain test && rulechain run   (README.md tells more)");
    super::EXIT_OK
}
