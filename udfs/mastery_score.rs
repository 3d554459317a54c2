//! A learner's mastery of a skill: the mean of their best three scores, or of all
//! of them when they have fewer (contract §3.3, `mastery_daily.mastery`).
use arroyo_udf_plugin::udf;

#[udf]
fn mastery_score(scores: Vec<f64>) -> f64 {
    let mut scores = scores;
    scores.sort_by(|a, b| b.total_cmp(a));
    let best = &scores[..scores.len().min(3)];
    best.iter().sum::<f64>() / best.len() as f64
}
