//! An async lookup that takes longer than its timeout.
use std::time::Duration;

use arroyo_udf_plugin::udf;

#[udf(ordered, timeout = "100ms", allowed_in_flight = 2)]
async fn too_slow(user_id: &str) -> String {
    arroyo_udf_plugin::async_udf::tokio::time::sleep(Duration::from_secs(2)).await;
    user_id.to_string()
}
