//! `canotify`: the operator's command line. Each subcommand lives in the
//! library; this only parses arguments and prints.

use std::process::ExitCode;

use canotify_cli::dlq::{self, Confirm, DeadLetters, DlqArgs, SelectArgs};
use canotify_cli::{chaos, demo, seed, status};
use canotify_common::config::WarehouseArgs;
use canotify_common::warehouse::{PostgresWarehouse, Warehouse};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "canotify", version, about = "Operate the canotify pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill the local case table with a realistic mix of cases.
    Seed {
        #[command(flatten)]
        warehouse: WarehouseArgs,

        /// How many cases to add.
        #[arg(long, default_value_t = 1000)]
        cases: usize,

        /// Seed of the generator; the same seed gives the same cases.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Create or update canotify's tables in the warehouse.
    Migrate {
        #[command(flatten)]
        warehouse: WarehouseArgs,
    },
    /// Run the whole pipeline locally against simulators, then summarise.
    Demo(demo::DemoArgs),
    /// Run the pipeline locally under worker kills, broker cuts, upstream
    /// errors and a rate limit, then prove nothing was lost or sent twice.
    Chaos(chaos::ChaosArgs),
    /// Inspect, requeue or purge the dead letters in `{prefix}.dead`.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Depth and consumers of every queue, and the outcome counts.
    Status(status::StatusArgs),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Count the dead letters and list them, one line each, in queue order.
    List {
        #[command(flatten)]
        common: DlqArgs,
    },
    /// Show every letter with this id: headers, and body with the phone
    /// masked and the dates and test type left out.
    Show {
        #[command(flatten)]
        common: DlqArgs,

        /// The letter's id, as `list` shows it.
        id: String,
    },
    /// Put letters back on the queue they came from, attempts reset. A
    /// case whose person was texted by another case meanwhile is recorded
    /// duplicate instead.
    Requeue {
        #[command(flatten)]
        common: DlqArgs,

        #[command(flatten)]
        select: SelectArgs,

        #[command(flatten)]
        warehouse: WarehouseArgs,

        /// Two cases of one phone whose test dates are at most this many
        /// days apart are one infection, and get one text (as the
        /// producer's setting of the same name).
        #[arg(long, env = "CANOTIFY_DEDUP_WINDOW_DAYS", default_value_t = 14)]
        dedup_window_days: u32,
    },
    /// Remove letters for good, after asking.
    Purge {
        #[command(flatten)]
        common: DlqArgs,

        #[command(flatten)]
        select: SelectArgs,

        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

impl DlqCommand {
    fn common(&self) -> &DlqArgs {
        match self {
            Self::List { common }
            | Self::Show { common, .. }
            | Self::Requeue { common, .. }
            | Self::Purge { common, .. } => common,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("canotify: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Seed {
            warehouse,
            cases,
            seed,
        } => {
            let db = PostgresWarehouse::connect(&warehouse.database_url, &warehouse.schema).await?;
            db.migrate().await?;
            let today = seed::today_utc();
            let rows: Vec<_> = seed::generate(cases, seed, today)
                .into_iter()
                .map(|c| c.case)
                .collect();
            let inserted = db.insert_cases(&rows).await?;
            println!("seeded {inserted} cases into {}.cases", warehouse.schema);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { warehouse } => {
            let db = PostgresWarehouse::connect(&warehouse.database_url, &warehouse.schema).await?;
            db.migrate().await?;
            println!("schema {} is up to date", warehouse.schema);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let json = args.json;
            let summary = demo::run(args).await?;
            println!("{}", demo::render(&summary));
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            if summary.passed() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "canotify demo: FAILED: {} unresolved, {} duplicate SMS",
                    summary.unresolved, summary.duplicate_sms
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Chaos(args) => {
            let json = args.json;
            let summary = chaos::run(args).await?;
            println!("{}", chaos::render(&summary));
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            if summary.passed() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("canotify chaos: FAILED");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Dlq { command } => {
            // A missing selection is refused before anything is connected.
            if let DlqCommand::Requeue { select, .. } | DlqCommand::Purge { select, .. } = &command
            {
                select.selection()?;
            }
            let dead = DeadLetters::connect(&command.common().broker).await?;
            let done = run_dlq(&dead, command).await;
            dead.close().await;
            done
        }
        Command::Status(args) => {
            let report = status::gather(&args.broker, &args.warehouse).await?;
            emit(args.json, &report, status::render)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_dlq(dead: &DeadLetters, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let json = command.common().json;
    match command {
        DlqCommand::List { .. } => {
            emit(json, &dead.list().await?, dlq::render_list)?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, .. } => {
            emit(json, &dead.show(&id).await?, dlq::render_show)?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Requeue {
            select,
            warehouse,
            dedup_window_days,
            ..
        } => {
            let db = PostgresWarehouse::connect(&warehouse.database_url, &warehouse.schema).await?;
            let report = dead
                .requeue(&select.selection()?, &db, dedup_window_days)
                .await?;
            emit(json, &report, dlq::render_requeue)?;
            Ok(complete(report.is_complete()))
        }
        DlqCommand::Purge { select, yes, .. } => {
            // The question goes to stderr, so `--json` output stays one
            // object on stdout.
            let mut input = std::io::stdin().lock();
            let mut prompt = std::io::stderr();
            let confirm = if yes {
                Confirm::Yes
            } else {
                Confirm::Ask {
                    input: &mut input,
                    prompt: &mut prompt,
                }
            };
            let report = dead.purge(&select.selection()?, confirm).await?;
            emit(json, &report, dlq::render_purge)?;
            Ok(complete(report.not_found.is_empty()))
        }
    }
}

/// Prints one JSON object, or the text rendering.
fn emit<T: Serialize>(json: bool, value: &T, render: fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", render(value));
    }
    Ok(())
}

/// Failure when part of what was asked was not done, so scripts notice.
fn complete(all_done: bool) -> ExitCode {
    if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
