//! `rulechain schema [--out DIR]`: writes the JSON Schemas of the config, chain, devices and
//! test files and of `diff --format json`'s report, derived from the Rust types (the committed `schemas/` must equal this output).

use std::path::Path;

use schemars::generate::SchemaSettings;

use crate::config::Config;
use crate::rules::model::{ChainFile, DevicesFile, TestFile};

/// Every schema: file name and JSON text.
pub fn all() -> Vec<(&'static str, String)> {
    let gen = || SchemaSettings::draft2020_12().into_generator();
    // A stable `$id` per file, so editors and validators can name a schema whatever the path
    // it was found at.
    let render = |name: &str, mut s: schemars::Schema| {
        s.insert(
            "$id".into(),
            format!(
                "urn:rulechain:schema:{}",
                name.trim_end_matches(".schema.json")
            )
            .into(),
        );
        serde_json::to_string_pretty(&s).unwrap_or_default() + "\n"
    };
    vec![
        (
            "config.schema.json",
            render("config.schema.json", gen().into_root_schema_for::<Config>()),
        ),
        (
            "chain.schema.json",
            render(
                "chain.schema.json",
                gen().into_root_schema_for::<ChainFile>(),
            ),
        ),
        (
            "devices.schema.json",
            render(
                "devices.schema.json",
                gen().into_root_schema_for::<DevicesFile>(),
            ),
        ),
        (
            "test.schema.json",
            render("test.schema.json", gen().into_root_schema_for::<TestFile>()),
        ),
        (
            "diff.schema.json",
            render(
                "diff.schema.json",
                gen().into_root_schema_for::<crate::diff::Report>(),
            ),
        ),
    ]
}

/// Writes every schema into `dir`.
pub fn run(dir: &Path) -> i32 {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return super::EXIT_USAGE;
    }
    for (name, text) in all() {
        let p = dir.join(name);
        if let Err(e) = std::fs::write(&p, text) {
            eprintln!("error: cannot write {}: {e}", p.display());
            return super::EXIT_USAGE;
        }
        println!("wrote {}", p.display());
    }
    super::EXIT_OK
}
