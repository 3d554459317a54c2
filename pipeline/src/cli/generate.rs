//! `sluice generate`: realistic platform traffic as JSON lines.

use std::path::Path;

use super::Definitions;
use crate::error::Result;
use crate::generate::{generate_to_dir, GenerateOptions, GenerateSummary};
use crate::schema::SchemaRegistry;

#[derive(Debug, Clone, clap::Args)]
pub struct TrafficArgs {
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Users on the platform.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,
    /// Hours of traffic, from 2026-03-01T00:00Z.
    #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u32).range(1..))]
    pub hours: u32,
}

impl TrafficArgs {
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions { seed: self.seed, users: self.users, hours: self.hours, ..GenerateOptions::default() }
    }
}

/// Where generated traffic goes.
pub enum Destination<'a> {
    Dir(&'a Path),
    /// The brokers, and a rate in messages per second.
    Kafka(&'a str, Option<u32>),
}

pub async fn generate(to: Destination<'_>, traffic: &TrafficArgs, definitions: &Definitions) -> Result<GenerateSummary> {
    let registry = SchemaRegistry::load(&definitions.schemas_dir()?)?;
    let options = traffic.options();
    let started = std::time::Instant::now();
    let (summary, place) = match to {
        Destination::Dir(out) => (generate_to_dir(&registry, &options, out)?, out.display().to_string()),
        Destination::Kafka(brokers, rate) => {
            (crate::source::produce_generated(brokers, &registry, &options, rate).await?, format!("kafka {brokers}"))
        }
    };
    let total = summary.total_messages();
    eprintln!(
        "generated {total} messages ({} bad, {} very late) for {} topics into {} in {:.1}s",
        summary.topics.values().map(|c| c.bad).sum::<u64>(),
        summary.topics.values().map(|c| c.late).sum::<u64>(),
        summary.topics.len(),
        place,
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}
