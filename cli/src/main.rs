//! `canotify`: the operator's command line. Each subcommand lives in the
//! library; this only parses arguments and prints.

use std::process::ExitCode;

use canotify_cli::{demo, seed};
use canotify_common::config::WarehouseArgs;
use canotify_common::warehouse::{PostgresWarehouse, Warehouse};
use clap::{Parser, Subcommand};

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
    }
}
