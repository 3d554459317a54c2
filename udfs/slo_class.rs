//! Buckets a request's latency into the gateway's SLO classes: `met` up to
//! 100 ms (the p95 target), `degraded` up to 500 ms, `breached` beyond.
use arroyo_udf_plugin::udf;

#[udf]
fn slo_class(duration_ms: f64) -> String {
    match duration_ms {
        d if d <= 100.0 => "met",
        d if d <= 500.0 => "degraded",
        _ => "breached",
    }
    .to_string()
}
