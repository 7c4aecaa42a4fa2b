//! The command line: what a user may type, and its check in one step.
//!
//! [`Cli`] is what clap parses; [`Invocation::from_cli`] turns it into
//! validated settings (the config file loaded, item keys checked) before
//! anything talks to the network, so every usage or config mistake is
//! reported up front with exit code 2. The CLI structs stay here: the
//! commands receive their own `Settings`, never clap types, and nothing here
//! crosses the wire.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shelfsync_core::ItemKey;

use shelfsync_core::item::validate_id;

use crate::certs::CertsCommand;
use crate::config::Config;
use crate::{demo, history, holds, import, item, lock, status, transfers};

/// Shown at the end of `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success (status: every store is healthy; demo: stopped with Ctrl-C)
  1  needs attention: a store is not healthy, the item or its history was
     not found, or the import rejected rows
  2  error: bad usage or config, the coordinator unreachable, or a command
     that could not finish";

/// Shown at the end of `demo --help`.
const DEMO_HELP: &str = "\
Starts shelfsync-coordinator and one shelfsync-agent per store (found next to
shelfctl: build them with `cargo build --workspace --bins`), seeds a catalog,
sends simulated register traffic and shows the live status. Certificates,
configs, logs/ and data/ stay in DIR for the next run; delete DIR to start
from scratch.

Exit codes:
  0  stopped with Ctrl-C (or SIGTERM); every process it started is stopped
  2  error: a process could not start or died, or DIR is in use by another demo";

/// shelfsync admin CLI: certificates, store status, items, history, catalog import.
#[derive(Debug, Parser)]
#[command(name = "shelfctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// shelfctl config file (TOML: coordinator, server_name, timeout, `[tls]` with
    /// the admin cert). Needed by every command but `certs` and `demo`.
    #[arg(long, global = true, value_name = "FILE", env = "SHELFCTL_CONFIG")]
    pub config: Option<PathBuf>,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or extend the private CA and the certificates of a cluster.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Show the sync health of every registered store (exit 1 unless all healthy).
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Read items from the coordinator.
    #[command(subcommand)]
    Item(ItemCommand),
    /// Show the change log of one item, newest first.
    #[command(after_help = EXIT_CODES)]
    History(HistoryArgs),
    /// Load or update a catalog from CSV (columns location,sku,name,quantity).
    #[command(after_help = EXIT_CODES)]
    Import(ImportArgs),
    /// Take the lock on one item for a stock count; prints its token (exit 1
    /// when another holder has it).
    #[command(after_help = EXIT_CODES)]
    Lock(LockArgs),
    /// Give back a lock taken with `shelfctl lock` (also fine when it is gone).
    #[command(after_help = EXIT_CODES)]
    Unlock(UnlockArgs),
    /// Active holds (carts, click & collect) with a line at a location, earliest expiry first.
    #[command(after_help = EXIT_CODES)]
    Holds(HoldsArgs),
    /// Transfers between locations, newest first.
    #[command(after_help = EXIT_CODES)]
    Transfers(TransfersArgs),
    /// One transfer.
    #[command(subcommand)]
    Transfer(TransferCommand),
    /// Run a local demo cluster (coordinator, store agents, simulated traffic) until Ctrl-C.
    #[command(after_help = DEMO_HELP)]
    Demo(DemoArgs),
}

/// Arguments of `shelfctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every 2 seconds until Ctrl-C; exits with the last refresh's code.
    #[arg(long)]
    pub watch: bool,
    /// Show only the stores that are not healthy (the summary still counts all).
    #[arg(long)]
    pub problems: bool,
    /// Order of the stores: registry, or lag (most changes behind first).
    #[arg(long, value_enum, default_value_t = status::Sort::Registry)]
    pub sort: status::Sort,
}

/// `shelfctl item ...`.
#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// Strong read of one item from the coordinator (exit 1 when not found).
    #[command(after_help = EXIT_CODES)]
    Get(KeyArgs),
}

/// An item key and the output format.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Location id, e.g. store-1 or online.
    pub location: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `shelfctl history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The item.
    #[command(flatten)]
    pub key: KeyArgs,
    /// Show at most this many entries (1..=1000).
    #[arg(long, default_value_t = history::DEFAULT_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(history::MAX_LIMIT)))]
    pub limit: u32,
}

/// Arguments of `shelfctl lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The item.
    #[command(flatten)]
    pub key: KeyArgs,
    /// Who takes the lock, e.g. counter-7 (same pattern as a location id).
    #[arg(long)]
    pub holder: String,
    /// The lease, 1s..=1h.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
}

/// Arguments of `shelfctl unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Location id.
    pub location: String,
    /// Stock keeping unit.
    pub sku: String,
    /// The token `shelfctl lock` printed.
    #[arg(long)]
    pub token: u64,
}

/// Arguments of `shelfctl holds`.
#[derive(Debug, Args)]
pub struct HoldsArgs {
    /// Location id.
    pub location: String,
    /// Only holds on this stock keeping unit.
    pub sku: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `shelfctl transfers`.
#[derive(Debug, Args)]
pub struct TransfersArgs {
    /// Only transfers from or to this location.
    #[arg(long)]
    pub location: Option<String>,
    /// Only transfers in this state: in_transit or closed.
    #[arg(long, value_parser = transfers::parse_state)]
    pub state: Option<shelfsync_core::TransferState>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shelfctl transfer ...`.
#[derive(Debug, Subcommand)]
pub enum TransferCommand {
    /// A transfer with its lines (exit 1 when not found).
    #[command(after_help = EXIT_CODES)]
    Show {
        /// The transfer's id, e.g. t42.
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `shelfctl import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV file with a header row naming the columns location,sku,name,quantity.
    #[arg(value_name = "FILE.csv")]
    pub file: PathBuf,
    /// Rows in flight at once (1..=1000).
    #[arg(long, default_value_t = import::DEFAULT_CONCURRENCY as u64,
          value_parser = clap::value_parser!(u64).range(1..=import::MAX_CONCURRENCY as u64))]
    pub concurrency: u64,
}

/// Arguments of `shelfctl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's certificates, configs, logs and data (created
    /// when missing, reused by the next run).
    #[arg(long, value_name = "DIR", default_value = demo::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Number of stores, each with its own agent (1..=20).
    #[arg(long, value_name = "N", default_value_t = demo::DEFAULT_STORES,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(demo::MAX_STORES)))]
    pub stores: u32,
}

/// A checked command line, ready to run.
#[derive(Debug)]
pub enum Invocation {
    /// `shelfctl certs ...`: local files only, no config needed.
    Certs(CertsCommand),
    /// `shelfctl demo`: writes its own configs, no config needed.
    Demo(demo::Settings),
    /// A command that talks to the coordinator.
    Admin {
        /// The loaded config.
        config: Config,
        /// What to do.
        task: Task,
    },
}

/// A command that talks to the coordinator, with its settings.
#[derive(Debug)]
pub enum Task {
    /// `shelfctl status`.
    Status(status::Settings),
    /// `shelfctl item get`.
    ItemGet(item::Settings),
    /// `shelfctl history`.
    History(history::Settings),
    /// `shelfctl import`.
    Import(import::Settings),
    /// `shelfctl lock`.
    Lock(lock::LockSettings),
    /// `shelfctl unlock`.
    Unlock(lock::UnlockSettings),
    /// `shelfctl holds`.
    Holds(holds::Settings),
    /// `shelfctl transfers`.
    Transfers(transfers::ListSettings),
    /// `shelfctl transfer show`.
    TransferShow(transfers::ShowSettings),
}

impl Task {
    /// The command as typed, for messages.
    fn name(&self) -> &'static str {
        match self {
            Task::Status(_) => "status",
            Task::ItemGet(_) => "item get",
            Task::History(_) => "history",
            Task::Import(_) => "import",
            Task::Lock(_) => "lock",
            Task::Unlock(_) => "unlock",
            Task::Holds(_) => "holds",
            Task::Transfers(_) => "transfers",
            Task::TransferShow(_) => "transfer show",
        }
    }
}

impl Invocation {
    /// Checks the arguments and loads the config file when the command needs it.
    pub fn from_cli(cli: Cli) -> anyhow::Result<Self> {
        let task = match cli.command {
            Command::Certs(cmd) => return Ok(Invocation::Certs(cmd)),
            Command::Demo(args) => {
                return Ok(Invocation::Demo(demo::Settings {
                    dir: args.dir,
                    stores: args.stores,
                }));
            }
            Command::Status(args) => Task::Status(status::Settings {
                json: args.json,
                watch: args.watch,
                problems: args.problems,
                sort: args.sort,
            }),
            Command::Item(ItemCommand::Get(args)) => Task::ItemGet(item::Settings {
                key: key(&args)?,
                json: args.json,
            }),
            Command::History(args) => Task::History(history::Settings {
                key: key(&args.key)?,
                limit: args.limit,
                json: args.key.json,
            }),
            Command::Lock(args) => Task::Lock(lock::LockSettings {
                key: key(&args.key)?,
                holder: args.holder,
                ttl: args.ttl,
                json: args.key.json,
            }),
            Command::Unlock(args) => Task::Unlock(lock::UnlockSettings {
                key: ItemKey::new(&args.location, &args.sku)
                    .with_context(|| format!("invalid item {}/{}", args.location, args.sku))?,
                token: args.token,
            }),
            Command::Holds(args) => {
                validate_id("location", &args.location)?;
                if let Some(sku) = &args.sku {
                    validate_id("sku", sku)?;
                }
                Task::Holds(holds::Settings {
                    location: args.location,
                    sku: args.sku,
                    json: args.json,
                })
            }
            Command::Transfers(args) => {
                if let Some(location) = &args.location {
                    validate_id("location", location)?;
                }
                Task::Transfers(transfers::ListSettings {
                    location: args.location,
                    state: args.state,
                    json: args.json,
                })
            }
            Command::Transfer(TransferCommand::Show { id, json }) => {
                validate_id("id", &id)?;
                Task::TransferShow(transfers::ShowSettings { id, json })
            }
            Command::Import(args) => Task::Import(import::Settings {
                path: args.file,
                concurrency: usize::try_from(args.concurrency)
                    .unwrap_or(import::DEFAULT_CONCURRENCY),
            }),
        };
        let Some(path) = cli.config else {
            anyhow::bail!(
                "`shelfctl {}` needs --config FILE (or SHELFCTL_CONFIG): the shelfctl config \
                 with the coordinator address and the admin certificate, see config/shelfctl.toml",
                task.name()
            );
        };
        let config = Config::load(&path)?;
        Ok(Invocation::Admin { config, task })
    }
}

fn key(args: &KeyArgs) -> anyhow::Result<ItemKey> {
    ItemKey::new(&args.location, &args.sku)
        .with_context(|| format!("invalid item {}/{}", args.location, args.sku))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Invocation> {
        Invocation::from_cli(Cli::try_parse_from(args)?)
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn admin_commands_need_a_config() {
        // SHELFCTL_CONFIG is read by clap; these tests never set it, and a
        // developer's own setting would only make the error differ.
        if std::env::var_os("SHELFCTL_CONFIG").is_some() {
            return;
        }
        let err = parse(&["shelfctl", "status"]).unwrap_err().to_string();
        assert!(
            err.contains("`shelfctl status` needs --config FILE"),
            "{err}"
        );
        let err = parse(&["shelfctl", "item", "get", "s1", "a"]).unwrap_err();
        assert!(
            err.to_string().contains("`shelfctl item get` needs"),
            "{err}"
        );
    }

    #[test]
    fn keys_and_ranges_are_checked_before_the_config() {
        let err = parse(&["shelfctl", "history", "store 1", "a"]).unwrap_err();
        assert!(format!("{err:#}").contains("invalid location"), "{err:#}");
        for bad in [
            &["shelfctl", "history", "s1", "a", "--limit", "0"][..],
            &["shelfctl", "history", "s1", "a", "--limit", "1001"],
            &["shelfctl", "import", "f.csv", "--concurrency", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let missing = parse(&[
            "shelfctl",
            "--config",
            "/nonexistent/shelfctl.toml",
            "status",
        ])
        .unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read config /nonexistent/shelfctl.toml"),
            "{missing:#}"
        );
    }

    #[test]
    fn certs_need_no_config() {
        let invocation =
            parse(&["shelfctl", "certs", "init", "--out", "x", "--store", "s1"]).unwrap();
        assert!(matches!(invocation, Invocation::Certs(_)));
    }

    #[test]
    fn demo_needs_no_config_and_has_defaults() {
        let Invocation::Demo(settings) = parse(&["shelfctl", "demo"]).unwrap() else {
            panic!("not a demo");
        };
        assert_eq!(settings.dir, PathBuf::from("demo"));
        assert_eq!(settings.stores, 3);
        let Invocation::Demo(settings) =
            parse(&["shelfctl", "demo", "--dir", "/tmp/d", "--stores", "2"]).unwrap()
        else {
            panic!("not a demo");
        };
        assert_eq!(settings.dir, PathBuf::from("/tmp/d"));
        assert_eq!(settings.stores, 2);
        for bad in ["0", "21", "x"] {
            assert!(
                Cli::try_parse_from(["shelfctl", "demo", "--stores", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
