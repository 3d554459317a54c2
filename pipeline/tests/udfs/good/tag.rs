/*
[dependencies]
hex = "0.4"
*/
//! A scalar UDF over strings, binary and numbers, with a nullable argument and
//! result, and a dependency from the comment above.
use arroyo_udf_plugin::udf;

#[udf]
fn tag(route: &str, bytes: Option<&[u8]>, limit: i32) -> Option<Vec<u8>> {
    let bytes = bytes?;
    let shown = &bytes[..bytes.len().min(limit.max(0) as usize)];
    Some(format!("{route}#{}", hex::encode(shown)).into_bytes())
}
