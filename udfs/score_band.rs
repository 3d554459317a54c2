//! An assessment score (0..100) as the band trainers talk about; no score, no band.
use arroyo_udf_plugin::udf;

#[udf]
fn score_band(score: Option<f64>) -> Option<String> {
    let band = match score? {
        s if s < 40.0 => "novice",
        s if s < 70.0 => "intermediate",
        s if s < 90.0 => "advanced",
        _ => "expert",
    };
    Some(band.to_string())
}
