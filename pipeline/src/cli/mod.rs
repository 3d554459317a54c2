//! The `sluice` command line: argument parsing here, one file per command.

mod bench;
mod demo;
mod generate;
mod maintain;
mod query;
mod run;
mod serve;
mod test;
mod udfs;
mod validate;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Streaming SQL from the learning platform's topics into a Delta Lake")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// An option for the lake's object store, repeatable: --storage-option KEY=VALUE
    /// (the keys delta-rs and object_store take, e.g. aws_endpoint, aws_region,
    /// azure_storage_account_name; the standard AWS_* and AZURE_* environment
    /// variables work too).
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = run::setting, global = true)]
    pub storage_options: Vec<(String, String)>,
}

/// Where the project's definitions live (defaults: ./schemas and ./sql, else the
/// ones next to the sources this binary was built from).
#[derive(Debug, Clone, clap::Args)]
pub struct Definitions {
    /// Directory of topic schemas (one TOML file per topic).
    #[arg(long, value_name = "DIR", global = true)]
    pub schemas: Option<PathBuf>,
    /// Directory of SQL files (one per output table, at the table's path).
    #[arg(long, value_name = "DIR", global = true)]
    pub sql: Option<PathBuf>,
    /// Directory of user-defined functions (one Rust file each); none if absent.
    #[arg(long, value_name = "DIR", global = true)]
    pub udfs: Option<PathBuf>,
    /// The row-level security policy (default: policy.toml beside the sql directory).
    #[arg(long, value_name = "FILE", global = true)]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a day and a half of traffic, run every SQL file over it, and show what landed.
    Demo {
        /// Where the generated input goes.
        #[arg(long, default_value = "demo-data", value_name = "DIR")]
        input: PathBuf,
        /// The lake to write (a directory or URL).
        #[arg(long, default_value = "lake")]
        lake: String,
        #[command(flatten)]
        traffic: generate::TrafficArgs,
        #[command(flatten)]
        definitions: Definitions,
    },
    /// Write generated platform traffic as JSON lines (DIR/<topic>/<partition>.jsonl) or into Kafka.
    Generate {
        /// Directory to write.
        #[arg(long, value_name = "DIR", required_unless_present = "kafka", conflicts_with = "kafka")]
        out: Option<PathBuf>,
        /// Kafka bootstrap servers to produce to (topics are created as the schemas say).
        #[arg(long, value_name = "BROKERS")]
        kafka: Option<String>,
        /// With --kafka: produce at this many messages per second (traffic that
        /// keeps flowing), instead of as fast as the broker takes them.
        #[arg(long, value_name = "MSG_PER_S", requires = "kafka", value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        #[command(flatten)]
        traffic: generate::TrafficArgs,
        #[command(flatten)]
        definitions: Definitions,
    },
    /// Run every SQL file over a directory of JSON-lines input, as a bounded stream.
    Run(run::RunArgs),
    /// Answer SQL over the lake's tables (named catalog.schema.table after their path).
    Query {
        #[arg(long)]
        lake: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The query, e.g. "SELECT * FROM monitoring.api_performance.request_response_times LIMIT 5".
        sql: String,
    },
    /// Measure end-to-end throughput and peak memory on generated traffic, from
    /// files or (with --kafka) through a broker.
    Bench(bench::BenchArgs),
    /// Check every schema and SQL file without running anything.
    Validate {
        #[command(flatten)]
        definitions: Definitions,
    },
    /// Print the streaming plan of one SQL file: sources, window, state, emit mode, columns.
    Explain {
        /// The SQL file, or its table (`monitoring/api_performance/request_response_times`
        /// or `monitoring.api_performance.request_response_times`).
        file: String,
        #[command(flatten)]
        definitions: Definitions,
    },
    /// List the lake's tables: rows, Delta version, live files and bytes, last Delta
    /// checkpoint, and what defines each (its SQL file, a CDC topic, sluice, or none).
    Tables {
        #[arg(long)]
        lake: String,
        #[command(flatten)]
        definitions: Definitions,
    },
    /// Run every SQL file's fixtures (<table>.fixtures/<case>/: input events and the
    /// expected rows) through the engine, and with --lake the data tests declared
    /// beside the SQL files (<table>.tests.toml) over that lake; exit 1 if any fails.
    Test {
        /// Also run the data tests over this lake.
        #[arg(long)]
        lake: Option<String>,
        #[command(flatten)]
        definitions: Definitions,
    },
    /// Compact small files and vacuum old ones, for a lake whose pipeline is stopped
    /// (a running pipeline maintains its tables itself).
    Maintain(maintain::MaintainArgs),
    /// Serve the lake read-only: Postgres wire protocol and the analytics API,
    /// authenticated by JWT, with row-level security.
    Serve(serve::ServeArgs),
    /// Build or list the user-defined functions of the udfs directory.
    Udfs {
        #[command(subcommand)]
        action: udfs::Action,
        #[command(flatten)]
        definitions: Definitions,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub async fn main(cli: Cli) -> Result<()> {
    let storage = crate::catalog::StorageOptions::new(&cli.storage_options);
    match cli.command {
        Command::Demo { input, lake, traffic, definitions } => demo::demo(&input, &lake, &traffic, &definitions, &storage).await,
        Command::Generate { out, kafka, rate, traffic, definitions } => {
            let to = match (&out, &kafka) {
                (Some(out), _) => generate::Destination::Dir(out),
                (None, Some(brokers)) => generate::Destination::Kafka(brokers, rate),
                (None, None) => return Err(Error::Config("generate needs --out DIR or --kafka BROKERS".into())),
            };
            generate::generate(to, &traffic, &definitions).await.map(|_| ())
        }
        Command::Run(args) => run::run(&args, &storage).await.map(|_| ()),
        Command::Query { lake, format, sql } => query::query(&lake, &sql, format, &storage).await,
        Command::Tables { lake, definitions } => query::tables(&lake, &definitions, &storage).await,
        Command::Test { lake, definitions } => test::test(lake.as_deref(), &definitions, &storage).await,
        Command::Maintain(args) => maintain::maintain(&args, &storage).await,
        Command::Serve(args) => serve::serve(&args, &storage).await,
        Command::Udfs { action, definitions } => udfs::udfs(action, &definitions),
        Command::Validate { definitions } => validate::validate(&definitions).await,
        Command::Explain { file, definitions } => validate::explain(&file, &definitions).await,
        Command::Bench(args) => match &args.kafka {
            None => bench::bench(&args, &storage).await,
            Some(brokers) => bench::bench_kafka(brokers, &args, &storage).await,
        },
    }
}

impl Definitions {
    pub fn schemas_dir(&self) -> Result<PathBuf> {
        locate(self.schemas.as_deref(), "schemas")
    }

    pub fn sql_dir(&self) -> Result<PathBuf> {
        locate(self.sql.as_deref(), "sql")
    }

    /// The row-level security policy: `--policy`, else `policy.toml` beside the
    /// sql directory, else the defaults from each table's columns.
    pub fn policy(&self) -> Result<crate::serve::Policy> {
        let path = match &self.policy {
            Some(path) => path.clone(),
            None => match self.sql_dir().ok().and_then(|sql| sql.parent().map(|p| p.join("policy.toml"))) {
                Some(path) if path.is_file() => path,
                _ => return Ok(crate::serve::Policy::default()),
            },
        };
        crate::serve::Policy::load(&path)
    }

    /// The udfs directory, if there is one.
    pub fn udfs_dir(&self) -> Option<PathBuf> {
        locate(self.udfs.as_deref(), "udfs").ok()
    }

    /// The UDF files, read and checked; none without a udfs directory.
    pub fn udf_files(&self) -> Result<Vec<crate::udf::UdfFile>> {
        match locate(self.udfs.as_deref(), "udfs") {
            Ok(dir) => crate::udf::load_dir(&dir),
            Err(e) if self.udfs.is_some() => Err(e),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Builds what is stale and loads every UDF, with progress while building.
    pub fn udfs(&self) -> Result<crate::udf::Udfs> {
        let progress = indicatif::MultiProgress::new();
        crate::udf::Udfs::build_and_load(&self.udf_files()?, &crate::udf::build::cache_dir(), &progress)
    }
}

/// Writes command output to stdout; a reader that went away (`| head`) is not an error.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout", e)),
        _ => Ok(()),
    }
}

fn locate(given: Option<&Path>, name: &str) -> Result<PathBuf> {
    if let Some(dir) = given {
        return if dir.is_dir() {
            Ok(dir.to_path_buf())
        } else {
            Err(Error::Config(format!("--{name} {}: no such directory", dir.display())))
        };
    }
    let here = PathBuf::from(name);
    if here.is_dir() {
        return Ok(here);
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    if built_from.is_dir() {
        return Ok(built_from);
    }
    Err(Error::Config(format!("no ./{name} directory here: run from the project root or pass --{name} DIR")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> run::RunArgs {
        match Cli::try_parse_from(["sluice", "run", "--lake", "l"].iter().chain(args)).unwrap().command {
            Command::Run(run) => run,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// A live run commits twice as often as a replay; a flag overrides either.
    #[test]
    fn commit_interval_defaults_by_input() {
        use std::time::Duration;
        assert_eq!(run_args(&["--kafka", "b:9092"]).commit_interval(), Duration::from_millis(500));
        assert_eq!(run_args(&["--input", "i"]).commit_interval(), Duration::from_secs(1));
        assert_eq!(run_args(&["--kafka", "b:9092", "--commit-interval", "2s"]).commit_interval(), Duration::from_secs(2));
        assert_eq!(run_args(&["--input", "i", "--commit-interval", "20ms"]).commit_interval(), Duration::from_millis(20));
    }
}
