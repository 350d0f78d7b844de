//! `swarmlb`: the command-line entry point.

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lb_user::{agent, observe::state::DEFAULT_RUNTIME_DIR, observe::status, print_stdout};

/// XDP load balancer and port isolator for Docker Swarm
///
/// swarmlb spreads connections to a VIP over the Swarm nodes that carry a
/// label (TLS passed through, health-checked), and drops traffic to the
/// ports of internal services on DMZ-facing interfaces. `swarmlb run`
/// is the agent (systemd unit swarmlb.service); the config is TOML
/// (/etc/swarmlb/swarmlb.toml). Start with the quick start,
/// /usr/share/doc/swarmlb/quickstart.md; every config key is in
/// /usr/share/doc/swarmlb/config.md.
#[derive(Parser)]
#[command(name = "swarmlb", version = lb_user::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the programs, apply the config, and run until SIGINT/SIGTERM
    /// (SIGHUP re-reads the config; a bad one keeps the running policy).
    /// On exit the programs stay attached and the maps pinned, so a restart
    /// or upgrade breaks no connection; `swarmlb down` removes them.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Where the state file for `swarmlb status` goes.
        #[arg(long, env = RUNTIME_DIR_ENV, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a config file against this host and print what it would
    /// apply: refuses everything `run` would refuse before attaching
    /// (interfaces, addresses, map limits and sizes, forwarding sysctls).
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the result (or the refusal) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take swarmlb's programs off every interface and remove the pinned
    /// maps (flows, NAT state, counters). Refuses while an agent owns the
    /// pin path.
    Down {
        /// The pin path of the config (`settings.pin_path`).
        #[arg(long, default_value = lb_user::source::config::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        #[arg(long, env = RUNTIME_DIR_ENV, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
    },
    /// Ask the running daemon to re-read its config (SIGHUP) and wait for
    /// the outcome: exits non-zero, with the daemon's reason, when the
    /// reload is refused.
    Reload {
        #[arg(long, env = RUNTIME_DIR_ENV, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// How long to wait for the outcome, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// On a DSR backend: attach the decapsulation program (mode dsr), put
    /// the VIPs on lo and set the ARP sysctls; `--undo` takes it all back.
    BackendSetup {
        /// The interface the edge's tunnel packets arrive on.
        #[arg(long, required_unless_present = "undo")]
        interface: Option<String>,
        /// A VIP this backend serves (repeat for more).
        #[arg(long = "vip")]
        vips: Vec<std::net::IpAddr>,
        /// An edge host's inside address, the tunnel source (repeat for more).
        #[arg(long = "edge")]
        edges: Vec<std::net::IpAddr>,
        #[arg(long, value_enum, default_value = "dsr")]
        mode: lb_user::backend_setup::BackendMode,
        /// Where the program's pins live.
        #[arg(long, default_value = lb_user::backend_setup::DEFAULT_BACKEND_PIN_PATH)]
        pin_path: PathBuf,
        /// Where the record of what was changed lives (for --undo).
        #[arg(long, default_value = lb_user::backend_setup::DEFAULT_BACKEND_STATE_DIR)]
        state_dir: PathBuf,
        /// Remove what an earlier setup did.
        #[arg(long)]
        undo: bool,
    },
    /// Show interfaces, zones, protected ports and counters of the running daemon.
    Status {
        #[arg(long, env = RUNTIME_DIR_ENV, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// The runtime dir of every command, when `--runtime-dir` is not given:
/// set once for an agent that does not use the default (a container's
/// `docker exec`, a second agent on a host).
const RUNTIME_DIR_ENV: &str = "SWARMLB_RUNTIME_DIR";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// What `RUST_LOG` leaves out unless it names them: aya's loader logs every
/// relocation of every program at DEBUG (95% of a `RUST_LOG=debug` log).
const QUIET_BY_DEFAULT: &[&str] = &["aya=info", "aya_obj=info"];

/// `RUST_LOG` (default `info`), with [`QUIET_BY_DEFAULT`] for the crates it
/// does not name.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let mut directives = vec![spec.to_owned()];
    for quiet in QUIET_BY_DEFAULT {
        let krate = quiet.split('=').next().unwrap_or_default();
        let named = spec.split(',').any(|d| d.trim().split(['=', ':', '[']).next() == Some(krate));
        if !named {
            directives.push((*quiet).to_owned());
        }
    }
    tracing_subscriber::EnvFilter::try_new(directives.join(",")).unwrap_or_else(|e| {
        eprintln!("swarmlb: RUST_LOG={spec:?} is not a filter ({e}); logging at info");
        tracing_subscriber::EnvFilter::new("info")
    })
}

fn init_logging(format: LogFormat) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Where [`generate_assets`] writes when this variable names a directory
/// (`cargo xtask package` sets it). An environment variable rather than a
/// hidden subcommand: clap_complete would offer a hidden one in the
/// completions.
const ASSETS_ENV: &str = "SWARMLB_GENERATE_ASSETS";

/// Writes `out/man/*.1` (one page per command, as `man swarmlb` and `man
/// swarmlb-run` find them) and `out/completions/` for bash, zsh and fish,
/// from the clap definition above: the package's documentation of the CLI
/// cannot drift from the CLI.
fn generate_assets(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // No pages for clap's `help` subcommand tree (`swarmlb-help-run(1)`, …).
    clap_mangen::generate_to(Cli::command().disable_help_subcommand(true), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    let mut cmd = Cli::command();
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "swarmlb", &completions)
            .with_context(|| format!("writing the {shell} completion to {}", completions.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Some(out) = std::env::var_os(ASSETS_ENV) {
        return match generate_assets(std::path::Path::new(&out)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("swarmlb: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, runtime_dir, log_format } => {
            init_logging(log_format);
            agent::run(&config, &runtime_dir)
        }
        Command::Down { pin_path, runtime_dir } => agent::down(&pin_path, &runtime_dir),
        Command::Check { config, json } => agent::check(&config, json),
        Command::Reload { runtime_dir, timeout } => agent::signal_reload(&runtime_dir, std::time::Duration::from_secs(timeout)),
        Command::BackendSetup { interface, vips, edges, mode, pin_path, state_dir, undo } => {
            init_logging(LogFormat::Text);
            if let Err(e) = lb_user::privileges::require("backend-setup") {
                eprintln!("swarmlb: {e:#}");
                return ExitCode::FAILURE;
            }
            if undo {
                lb_user::backend_setup::undo(&pin_path, &state_dir)
            } else {
                lb_user::backend_setup::setup(interface.as_deref().unwrap_or_default(), &vips, &edges, mode, &pin_path, &state_dir)
            }
        }
        Command::Status { runtime_dir, json } => status::collect(&runtime_dir).and_then(|r| {
            if json {
                print_stdout(&format!("{}\n", serde_json::to_string_pretty(&r)?))
            } else {
                print_stdout(&status::render_table(&r))
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn aya_is_quiet_unless_named() {
        let directives = |spec: Option<&str>| -> Vec<String> {
            let mut d: Vec<String> = log_filter(spec).to_string().split(',').map(str::to_owned).collect();
            d.sort();
            d
        };
        assert_eq!(directives(Some("debug")), ["aya=info", "aya_obj=info", "debug"]);
        assert_eq!(directives(None), ["aya=info", "aya_obj=info", "info"]);
        assert_eq!(directives(Some("debug,aya_obj=trace")), ["aya=info", "aya_obj=trace", "debug"]);
    }
}
