//! The `rulechain` command line: parses arguments and dispatches to one function per command.
//! Exit codes: 0 ok, 1 findings (invalid rules, failed tests, bad input lines), 2 usage or I/O.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use rulechain::{cli, live};

/// `--version`: the package version, the git commit and the build date.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RULECHAIN_COMMIT"),
    ", built ",
    env!("RULECHAIN_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "rulechain",
    version = VERSION,
    about = "A declarative rule-engine stream processor for IoT telemetry",
    after_help = "Without --config a command uses $RULECHAIN_CONFIG, else ./rulechain.yaml, else /etc/rulechain/rulechain.yaml, when the file exists; `run` falls back to the embedded default."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: MQTT in, chains on every message, commands and alarms out. With no
    /// config it runs the embedded default (a broker on 127.0.0.1:1883, `./rules`).
    Run {
        /// The engine config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The rules directory (default: the config's, else `./rules`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Also run the device simulator (the motor-overload alarm fires within a minute).
        #[arg(long)]
        demo: bool,
        /// Where the embedded broker listens, over the config's (`127.0.0.1:1884` when 1883 is
        /// taken).
        #[arg(long, value_name = "ADDR")]
        mqtt_listen: Option<std::net::SocketAddr>,
        /// Where the dashboard and API listen, over the config's (`127.0.0.1:8081`).
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<std::net::SocketAddr>,
        /// Move the saved state file aside (`state.redb.reset-<time>`) and start with empty
        /// state: the way out when the state file is damaged.
        #[arg(long)]
        reset_state: bool,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: cli::run::LogFormat,
    },
    /// Publish simulated pump telemetry to the broker.
    Simulate(cli::run::SimArgs),
    /// Write live MQTT traffic as `dry-run` input lines.
    Record {
        /// The engine config (broker and topic patterns).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The broker (default: the config's, else 127.0.0.1:1883).
        #[arg(long)]
        broker: Option<String>,
        /// The file to write (`-` for stdout).
        #[arg(long)]
        output: PathBuf,
        /// Stop after this many lines.
        #[arg(long)]
        count: Option<u64>,
    },
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
    /// Replay a recording through the rules at a git ref (or a directory) and the working
    /// tree's, and report which alarms and effects the change adds, removes or changes.
    Diff(cli::diff::Args),
    /// Run the rule tests (`*.test.yaml`).
    Test {
        /// The engine config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Test files or directories (default: the rules directory).
        paths: Vec<PathBuf>,
    },
    /// Send a sample alarm through a notification channel once and report the result.
    NotifyTest {
        /// The engine config that defines the channel.
        #[arg(long, default_value = "rulechain.yaml")]
        config: PathBuf,
        /// The device named in the sample alarm.
        #[arg(long, default_value = "test-device")]
        device: String,
        /// The channel's name.
        channel: String,
    },
    /// Silences through a running engine's API: `add`, `list`, `expire`.
    Silence {
        #[command(flatten)]
        target: cli::silence::Target,
        #[command(subcommand)]
        action: cli::silence::Action,
    },
    /// Start something new from a commented template: `new chain NAME` writes
    /// `rules/NAME.yaml` and its tests `rules/NAME.test.yaml`.
    New {
        #[command(subcommand)]
        what: NewWhat,
    },
    /// Start a project in DIR (default `.`): a config that runs the embedded broker on
    /// localhost, a chain with its tests, devices and a recording to replay.
    Init {
        /// The project's directory (created if missing; files already there are kept).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print a shell completion script (`rulechain completions bash > /etc/bash_completion.d/rulechain`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these definitions (`rulechain man > rulechain.1`).
    Man,
    /// Ask a running engine's `/livez` (or another URL on it) and exit 0 if it answers 200: the
    /// container image's HEALTHCHECK, where no HTTP client is installed.
    Healthcheck {
        /// The URL (plain HTTP).
        #[arg(long, default_value = "http://127.0.0.1:8080/livez")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s")]
        timeout: String,
    },
    /// Write the JSON Schemas of the config, chain, devices and test files.
    Schema {
        /// The directory to write into.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum NewWhat {
    /// A chain and its tests.
    Chain {
        /// The chain's name (`cold-room`).
        name: String,
        /// The rules directory.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
}

fn main() {
    let args = Cli::parse();
    let config = cli::config_or_default;
    let code = match args.command {
        Command::Validate {
            config: c,
            format,
            paths,
        } => cli::validate::run(config(c), paths, format),
        Command::Run {
            config: c,
            rules,
            demo,
            mqtt_listen,
            http_listen,
            reset_state,
            log_format,
        } => cli::run::run(
            config(c),
            rules,
            cli::run::Listen {
                mqtt: mqtt_listen,
                http: http_listen,
            },
            live::RunOptions { demo, reset_state },
            log_format,
        ),
        Command::Simulate(a) => cli::run::simulate(a),
        Command::Record {
            config: c,
            broker,
            output,
            count,
        } => cli::run::record(config(c), broker, output, count),
        Command::DryRun(mut a) => {
            a.config = config(a.config.take());
            cli::dry_run::run(a)
        }
        Command::Diff(mut a) => {
            a.config = config(a.config.take());
            cli::diff::run(a)
        }
        Command::Test { config: c, paths } => cli::test::run(config(c), paths),
        Command::Schema { out } => cli::schema::run(&out),
        Command::Init { dir } => cli::new::init(&dir),
        Command::Healthcheck { url, timeout } => cli::healthcheck::run(&url, &timeout),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rulechain",
                &mut std::io::stdout(),
            );
            cli::EXIT_OK
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => cli::EXIT_OK,
                Err(e) => {
                    eprintln!("error: cannot write the manual page: {e}");
                    cli::EXIT_USAGE
                }
            }
        }
        Command::New {
            what: NewWhat::Chain { name, rules },
        } => cli::new::chain_files(&name, &rules),
        Command::Silence { target, action } => cli::silence::run(target, action),
        Command::NotifyTest {
            config,
            device,
            channel,
        } => cli::notify_test::run(&config, &channel, &device),
    };
    std::process::exit(code);
}
