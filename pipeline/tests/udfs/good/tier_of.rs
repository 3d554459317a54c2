//! An async UDF: a slow lookup whose answers come back out of order.
use std::time::Duration;

use arroyo_udf_plugin::udf;

#[udf(unordered, timeout = "2s", allowed_in_flight = 4)]
async fn tier_of(user_id: &str) -> String {
    let n: u64 = user_id.bytes().map(u64::from).sum();
    arroyo_udf_plugin::async_udf::tokio::time::sleep(Duration::from_millis(n % 7)).await;
    let tier = if n % 2 == 0 { "gold" } else { "silver" };
    tier.to_string()
}
