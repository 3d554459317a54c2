//! The trivial UDF of the overhead benchmark.
use arroyo_udf_plugin::udf;

#[udf]
fn add_one(x: f64) -> f64 {
    x + 1.0
}
