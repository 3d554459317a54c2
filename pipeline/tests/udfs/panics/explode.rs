//! Panics on server errors.
use arroyo_udf_plugin::udf;

#[udf]
fn explode(status: i32) -> i32 {
    if status >= 500 {
        panic!("server error {status}");
    }
    status
}
