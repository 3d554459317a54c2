//! `sluice demo`: the whole thing in one command, on generated data.

use std::path::Path;

use super::generate::TrafficArgs;
use super::run::RunArgs;
use super::{Definitions, Format};
use crate::catalog::StorageOptions;
use crate::error::Result;

/// The question the demo answers from the lake once the run is done.
const EXAMPLE: &str = "SELECT service, route, sum(requests) AS requests, \
round(max(p95_duration_ms), 1) AS worst_p95_ms, sum(CASE WHEN slo_breached THEN 1 ELSE 0 END) AS slo_breached_minutes \
FROM monitoring.api_performance.request_response_times \
GROUP BY service, route ORDER BY slo_breached_minutes DESC, requests DESC LIMIT 5";

pub async fn demo(input: &Path, lake: &str, traffic: &TrafficArgs, definitions: &Definitions, storage: &StorageOptions) -> Result<()> {
    super::generate::generate(super::generate::Destination::Dir(input), traffic, definitions).await?;
    let args = RunArgs::files(input, lake, definitions);
    super::run::run(&args, storage).await?;
    eprintln!("\nWhich routes breach their latency SLO most often?\n  sluice query --lake {lake} \"{EXAMPLE}\"");
    let batches = super::query::run_query(lake, EXAMPLE, storage).await?;
    super::emit(&super::query::render(&batches, Format::Table)?)
}
