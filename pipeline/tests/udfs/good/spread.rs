//! An aggregate UDF: the largest minus the smallest value of a group.
use arroyo_udf_plugin::udf;

#[udf]
fn spread(values: Vec<f64>) -> f64 {
    let max = values.iter().cloned().fold(f64::MIN, f64::max);
    let min = values.iter().cloned().fold(f64::MAX, f64::min);
    max - min
}
