//! The few distributions the traffic model draws from, on top of `SmallRng`.

use rand::rngs::SmallRng;
use rand::Rng;

/// True with probability `p`.
pub(super) fn chance(rng: &mut SmallRng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// A standard normal draw (Box-Muller; one of the pair is enough here).
pub(super) fn normal(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Log-normal with the given median; `sigma` sets the tail (p95 = median * e^(1.645 sigma)).
pub(super) fn lognormal(rng: &mut SmallRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// Exponential with the given mean.
pub(super) fn exponential(rng: &mut SmallRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Poisson count: Knuth for small means, a rounded normal beyond.
pub(super) fn poisson(rng: &mut SmallRng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        return (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u32;
    }
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p = rng.random::<f64>();
    while p > limit {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

/// Beta(a, b) for integer shapes: the a-th smallest of a + b - 1 uniforms.
pub(super) fn beta(rng: &mut SmallRng, a: usize, b: usize) -> f64 {
    let mut draws = [0.0f64; 16];
    let n = (a + b - 1).min(draws.len());
    for d in draws.iter_mut().take(n) {
        *d = rng.random::<f64>();
    }
    draws[..n].sort_by(f64::total_cmp);
    draws[a.clamp(1, n) - 1]
}

/// A uniformly chosen element; `items` must not be empty.
pub(super) fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A discrete distribution over `0..n` by cumulative weights (binary search per draw).
#[derive(Debug, Clone)]
pub(super) struct Weighted {
    cumulative: Vec<f64>,
}

impl Weighted {
    pub(super) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += w.max(0.0);
                total
            })
            .collect();
        Weighted { cumulative }
    }

    /// Zipf over `n` ranks: rank k has weight 1 / k^s.
    pub(super) fn zipf(n: usize, s: f64) -> Self {
        Weighted::new((1..=n).map(|k| 1.0 / (k as f64).powf(s)))
    }

    pub(super) fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// An index; `None` when every weight is zero.
    pub(super) fn sample(&self, rng: &mut SmallRng) -> Option<usize> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let x = rng.random::<f64>() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        Some(i.min(self.cumulative.len() - 1))
    }
}
