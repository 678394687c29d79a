//! The `rulechain` command line: parses arguments and dispatches to one function per command.
//! Exit codes: 0 ok, 1 findings (invalid rules, failed tests, bad input lines), 2 usage or I/O.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rulechain::cli;

#[derive(Parser)]
#[command(
    name = "rulechain",
    version,
    about = "A declarative rule-engine stream processor for IoT telemetry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check config, chains, devices and test files; print every problem with its position.
    Validate {
        /// The engine config (checks notify channel names against it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: cli::validate::Format,
        /// Files or directories (default: the rules directory).
        paths: Vec<PathBuf>,
    },
    /// Feed recorded messages through the chains on a virtual clock and print what would happen.
    DryRun(cli::dry_run::Args),
    /// Run the rule tests (`*.test.yaml`).
    Test {
        /// The engine config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Test files or directories (default: the rules directory).
        paths: Vec<PathBuf>,
    },
    /// Write the JSON Schemas of the config, chain, devices and test files.
    Schema {
        /// The directory to write into.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
}

fn main() {
    let args = Cli::parse();
    let code = match args.command {
        Command::Validate {
            config,
            format,
            paths,
        } => cli::validate::run(config, paths, format),
        Command::DryRun(a) => cli::dry_run::run(a),
        Command::Test { config, paths } => cli::test::run(config, paths),
        Command::Schema { out } => cli::schema::run(&out),
    };
    std::process::exit(code);
}
