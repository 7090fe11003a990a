//! Shared by the integration tests: deterministic random data and error measures.

#![allow(dead_code)]

/// A 2-D tensor's values as f32 on the host.
pub fn to_vec(t: burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// xorshift64*: deterministic, dependency-free random numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `len` values uniform in [-amplitude, amplitude), with every 17th one 8 times larger
    /// (outliers, as in real weights).
    pub fn values(&mut self, len: usize, amplitude: f32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let v = self.uniform() * amplitude;
                if i % 17 == 5 { v * 8.0 } else { v }
            })
            .collect()
    }
}

/// `x [m, k] @ w^T` with `w [n, k]`, in f64.
pub fn matmul_f64(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for r in 0..m {
        for c in 0..n {
            out[r * n + c] = (0..k)
                .map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i]))
                .sum();
        }
    }
    out
}

/// `max |got - want| / max |want|` (the largest error relative to the output's scale).
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()));
    worst / scale
}
