//! Does not compile.
use arroyo_udf_plugin::udf;

#[udf]
fn broken(x: i64) -> i64 {
    x + "one"
}
