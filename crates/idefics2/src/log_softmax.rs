//! Softmax over a vocabulary on the host, fast: the exponentials of 32k logits per token.
//!
//! `f32::exp` is a libm call per value and does not vectorize: two passes of it over a 32k
//! vocabulary (the log-probability reported, and sampling) took 0.35 ms a token, as long as the
//! default model's whole decode step, and with 16 rows in a batch half of the engine's step.
//! [`exp_nonpositive`] is a polynomial the compiler vectorizes (relative error below 3e-7, of the
//! same order as f32 rounding), and the sums are kept in f64.

/// Values per block summed in f32 lanes before the block's sum is added in f64.
const BLOCK: usize = 1024;

/// `exp(x)` for `x <= 0` (logits minus their maximum): exactly 0 below -87, where f32 would be
/// subnormal, and for -inf (banned tokens).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact for the n that occur here (|n| <= 126).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer n and leaves it in the low bits of the
    // sum's mantissa (no rounding or conversion instruction: SSE2 vectorizes it all).
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4B40_0000;
    let clamped = if x > -87.0 { x } else { -87.0 };
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // e^r on |r| <= ln(2)/2 by its Taylor series to r^6 (remainder below 1.2e-7; with f32
    // rounding the result is within 3e-7).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n: n + 127 in the exponent field.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_BITS).wrapping_add(127) << 23);
    if x >= -87.0 { p * scale } else { 0.0 }
}

/// The largest finite-or-not value of `values` (`-inf` when empty).
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for j in 0..8 {
            lanes[j] = lanes[j].max(chunk[j]);
        }
    }
    rest.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `sum(exp((v - max) * factor))` over `values`, each term also written to `terms` when given.
pub fn exp_sum(values: &[f32], max: f32, factor: f32, terms: Option<&mut [f32]>) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above; the function needs nothing else.
        #[allow(unsafe_code)]
        return unsafe { exp_sum_avx2(values, max, factor, terms) };
    }
    exp_sum_body(values, max, factor, terms)
}

/// [`exp_sum_body`] compiled for AVX2 (8 lanes). Not FMA: fused products would round differently,
/// and a seed should draw the same tokens on every x86-64 machine.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_sum_avx2(values: &[f32], max: f32, factor: f32, terms: Option<&mut [f32]>) -> f64 {
    exp_sum_body(values, max, factor, terms)
}

/// The work of [`exp_sum`]: each block's terms are written first (a loop the compiler vectorizes)
/// and summed in 8 lanes after (a sum inside the same loop stayed scalar).
#[inline(always)]
fn exp_sum_body(values: &[f32], max: f32, factor: f32, mut terms: Option<&mut [f32]>) -> f64 {
    let mut scratch = [0f32; BLOCK];
    let mut total = 0f64;
    for (b, block) in values.chunks(BLOCK).enumerate() {
        let out = match terms.as_deref_mut() {
            Some(terms) => &mut terms[b * BLOCK..b * BLOCK + block.len()],
            None => &mut scratch[..block.len()],
        };
        for (o, &v) in out.iter_mut().zip(block) {
            *o = exp_nonpositive((v - max) * factor);
        }
        let mut lanes = [0f32; 8];
        let chunks = out.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            for j in 0..8 {
                lanes[j] += chunk[j];
            }
        }
        total += lanes.iter().chain(rest).map(|&l| f64::from(l)).sum::<f64>();
    }
    total
}

/// What turns a row of logits into log-probabilities: its maximum and `ln(sum(exp(l - max)))`.
#[derive(Debug, Clone, Copy)]
pub struct LogSoftmax {
    max: f32,
    log_sum: f64,
}

impl LogSoftmax {
    pub fn of(logits: &[f32]) -> Self {
        let max = max(logits);
        Self {
            max,
            log_sum: exp_sum(logits, max, 1.0, None).ln(),
        }
    }

    /// Natural-log probability of a token whose logit is `logit`.
    pub fn log_prob(&self, logit: f32) -> f32 {
        ((logit - self.max) as f64 - self.log_sum) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_f32_rounding() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let exact = f64::from(x).exp();
            let err = ((f64::from(exp_nonpositive(x)) - exact) / exact).abs();
            worst = worst.max(err);
            x += 0.000_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn sums_and_terms_agree_with_the_plain_computation() {
        let values: Vec<f32> = (0..3001)
            .map(|i| ((i * 37) % 101) as f32 * 0.13 - 6.0)
            .collect();
        let m = max(&values);
        assert_eq!(m, values.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let mut terms = vec![0f32; values.len()];
        let sum = exp_sum(&values, m, 0.5, Some(&mut terms));
        let plain: f64 = values.iter().map(|&v| (f64::from(v - m) * 0.5).exp()).sum();
        assert!((sum - plain).abs() / plain < 1e-6, "{sum} vs {plain}");
        for (t, v) in terms.iter().zip(&values) {
            let e = (f64::from(v - m) * 0.5).exp();
            assert!((f64::from(*t) - e).abs() <= 3e-7 * e, "{t} vs {e}");
        }
        let norm = LogSoftmax::of(&values);
        let lp = norm.log_prob(values[5]);
        let plain_lp = f64::from(values[5] - m)
            - values
                .iter()
                .map(|&v| f64::from(v - m).exp())
                .sum::<f64>()
                .ln();
        assert!((f64::from(lp) - plain_lp).abs() < 1e-6);
    }
}
