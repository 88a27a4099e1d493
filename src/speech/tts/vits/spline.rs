//! The inverse of the monotonic rational-quadratic spline (Durkan et al., "Neural Spline Flows")
//! with linear tails, as the duration predictor's `ConvFlow` uses it. Plain Rust: it runs on one
//! value per phoneme.

const MIN_BIN_WIDTH: f64 = 1e-3;
const MIN_BIN_HEIGHT: f64 = 1e-3;
const MIN_DERIVATIVE: f64 = 1e-3;

fn softmax(v: &[f64]) -> Vec<f64> {
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Knot positions on `[lo, hi]` from unnormalized bin sizes.
fn knots(unnormalized: &[f64], min_bin: f64, lo: f64, hi: f64) -> Vec<f64> {
    let bins = unnormalized.len();
    let sizes = softmax(unnormalized);
    let mut knots = Vec::with_capacity(bins + 1);
    knots.push(lo);
    let mut acc = 0.0;
    for s in &sizes[..bins - 1] {
        acc += min_bin + (1.0 - min_bin * bins as f64) * s;
        knots.push((hi - lo) * acc + lo);
    }
    knots.push(hi);
    knots
}

/// Maps `y` back through the spline on `[-bound, bound]` (identity outside). `widths` and
/// `heights` have one entry per bin, `derivatives` one per inner knot.
pub(crate) fn inverse(
    y: f32,
    widths: &[f32],
    heights: &[f32],
    derivatives: &[f32],
    bound: f64,
) -> f32 {
    let y = y as f64;
    if !(-bound..=bound).contains(&y) {
        return y as f32;
    }
    let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let cw = knots(&to64(widths), MIN_BIN_WIDTH, -bound, bound);
    let ch = knots(&to64(heights), MIN_BIN_HEIGHT, -bound, bound);
    // Derivatives at all knots; the outer ones make the tails join linearly (slope 1).
    let edge = (1.0 - MIN_DERIVATIVE).exp_m1().ln();
    let mut d = Vec::with_capacity(derivatives.len() + 2);
    d.push(edge);
    d.extend(derivatives.iter().map(|&x| x as f64));
    d.push(edge);
    let d: Vec<f64> = d.iter().map(|&x| MIN_DERIVATIVE + softplus(x)).collect();

    let bins = widths.len();
    // The bin holding y: the last knot ≤ y, the top one nudged up as the reference does.
    let mut bin = 0;
    for (k, &c) in ch.iter().enumerate().take(bins + 1) {
        let c = if k == bins { c + 1e-6 } else { c };
        if y >= c {
            bin = k;
        }
    }
    let bin = bin.min(bins - 1);
    let width = cw[bin + 1] - cw[bin];
    let height = ch[bin + 1] - ch[bin];
    let delta = height / width;
    let (d0, d1) = (d[bin], d[bin + 1]);
    let dy = y - ch[bin];
    let a = dy * (d0 + d1 - 2.0 * delta) + height * (delta - d0);
    let b = height * d0 - dy * (d0 + d1 - 2.0 * delta);
    let c = -delta * dy;
    let discriminant = b * b - 4.0 * a * c;
    let root = (2.0 * c) / (-b - discriminant.sqrt());
    (root * width + cw[bin]) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward spline, written independently, to check `inverse` against.
    fn forward(x: f64, w: &[f32], h: &[f32], dr: &[f32], bound: f64) -> f64 {
        let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let cw = knots(&to64(w), MIN_BIN_WIDTH, -bound, bound);
        let ch = knots(&to64(h), MIN_BIN_HEIGHT, -bound, bound);
        let edge = (1.0 - MIN_DERIVATIVE).exp_m1().ln();
        let mut d = vec![edge];
        d.extend(dr.iter().map(|&x| x as f64));
        d.push(edge);
        let d: Vec<f64> = d.iter().map(|&x| MIN_DERIVATIVE + softplus(x)).collect();
        let bin = (0..w.len()).rev().find(|&k| x >= cw[k]).unwrap_or(0);
        let width = cw[bin + 1] - cw[bin];
        let height = ch[bin + 1] - ch[bin];
        let delta = height / width;
        let theta = (x - cw[bin]) / width;
        let tt = theta * (1.0 - theta);
        let num = height * (delta * theta * theta + d[bin] * tt);
        let den = delta + (d[bin] + d[bin + 1] - 2.0 * delta) * tt;
        ch[bin] + num / den
    }

    #[test]
    fn inverse_undoes_the_forward_spline() {
        let w = [0.3, -1.0, 0.5, 2.0, 0.0, -0.4, 1.1, 0.2, -2.0, 0.7];
        let h = [1.0, 0.2, -0.5, 0.3, 0.9, -1.2, 0.4, 0.0, 0.6, -0.3];
        let d = [0.1, -0.5, 1.5, 0.0, 0.3, -1.0, 0.8, 0.2, -0.2];
        for i in 0..=100 {
            let x = -4.99 + 9.98 * i as f64 / 100.0;
            let y = forward(x, &w, &h, &d, 5.0);
            let back = inverse(y as f32, &w, &h, &d, 5.0) as f64;
            assert!((back - x).abs() < 1e-4, "x {x} → y {y} → {back}");
        }
        assert_eq!(inverse(7.5, &w, &h, &d, 5.0), 7.5);
        assert_eq!(inverse(-5.5, &w, &h, &d, 5.0), -5.5);
    }
}
