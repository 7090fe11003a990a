//! Choosing the next token from one row of logits on the host, following transformers'
//! logits processors: bad words banned, repetition penalty, then greedy argmax or sampling with
//! temperature, top-k and top-p from a seeded generator.

use crate::error::{Error, Result};
use crate::log_softmax::{self, LogSoftmax};

#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    Sample {
        temperature: f32,
        /// 0 disables top-k.
        top_k: usize,
        /// 1.0 disables top-p.
        top_p: f32,
        seed: u64,
    },
}

impl Sampling {
    /// The seed of a sampling run; `None` for greedy decoding.
    pub fn seed(&self) -> Option<u64> {
        match *self {
            Self::Greedy => None,
            Self::Sample { seed, .. } => Some(seed),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    pub sampling: Sampling,
    /// 1.0 disables the penalty.
    pub repetition_penalty: f32,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            sampling: Sampling::Greedy,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::GenerationOption(m));
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if let Sampling::Sample {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return bad(format!("temperature must be > 0, got {temperature}"));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return bad(format!("top-p must be in (0, 1], got {top_p}"));
            }
        }
        Ok(())
    }
}

/// A small seeded generator (SplitMix64): reproducible across platforms, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sets banned tokens to -inf: single-token entries always, longer ones when the tokens so far
/// end with their prefix (`NoBadWordsLogitsProcessor`).
pub fn ban_bad_words(logits: &mut [f32], bad_words: &[Vec<u32>], context: &[u32]) {
    for words in bad_words {
        let Some((&last, prefix)) = words.split_last() else {
            continue;
        };
        if context.ends_with(prefix)
            && let Some(logit) = logits.get_mut(last as usize)
        {
            *logit = f32::NEG_INFINITY;
        }
    }
}

/// One row's next token from its logits, as transformers' processors choose it: bad words
/// banned, the repetition penalty, then greedy or sampling. Returns the token and the scores
/// after the ban (what log-probabilities are reported from, before temperature and penalties).
pub fn next_token(
    logits: &[f32],
    context: &[u32],
    bad_words: &[Vec<u32>],
    options: &SamplingOptions,
    rng: &mut Rng,
) -> (usize, Vec<f32>) {
    let mut scores = logits.to_vec();
    ban_bad_words(&mut scores, bad_words, context);
    if options.repetition_penalty == 1.0 {
        return (choose(&scores, &options.sampling, rng), scores);
    }
    let mut processed = scores.clone();
    apply_repetition_penalty(&mut processed, context, options.repetition_penalty);
    (choose(&processed, &options.sampling, rng), scores)
}

/// Natural-log probability of `token` under softmax(`logits`).
pub fn log_prob(logits: &[f32], token: usize) -> f32 {
    LogSoftmax::of(logits).log_prob(logits[token])
}

/// The `k` most likely tokens under softmax(`logits`) with their natural-log probabilities, most
/// likely first (ties by lower id).
pub fn top_log_probs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    top_log_probs_with(logits, &LogSoftmax::of(logits), k)
}

/// [`top_log_probs`] with the row's normaliser already computed.
pub fn top_log_probs_with(logits: &[f32], norm: &LogSoftmax, k: usize) -> Vec<(u32, f32)> {
    let order = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    ids.select_nth_unstable_by(k - 1, order);
    ids.truncate(k);
    ids.sort_by(order);
    ids.into_iter()
        .map(|i| (i as u32, norm.log_prob(logits[i])))
        .collect()
}

/// `RepetitionPenaltyLogitsProcessor`: every token seen so far is made less likely.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in context {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    for (logit, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
        *logit = if *logit < 0.0 {
            *logit * penalty
        } else {
            *logit / penalty
        };
    }
}

/// The first index of the largest value (torch.argmax's tie rule).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Picks a token from processed logits.
pub fn choose(logits: &[f32], sampling: &Sampling, rng: &mut Rng) -> usize {
    match *sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            if top_k == 0 && top_p >= 1.0 {
                return sample_all(logits, temperature, rng);
            }
            let mut candidates: Vec<(usize, f32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i, l / temperature))
                .collect();
            if candidates.is_empty() {
                return argmax(logits);
            }
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if top_k > 0 {
                candidates.truncate(top_k);
            }
            let max = candidates[0].1;
            let mut probs: Vec<f64> = candidates
                .iter()
                .map(|(_, l)| ((l - max) as f64).exp())
                .collect();
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
            // top-p: the smallest prefix whose mass reaches top_p (at least one token).
            let mut keep = probs.len();
            let mut mass = 0.0;
            for (i, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            let kept_mass: f64 = probs[..keep].iter().sum();
            let mut target = rng.next_f64() * kept_mass;
            for (i, p) in probs[..keep].iter().enumerate() {
                if target < *p {
                    return candidates[i].0;
                }
                target -= p;
            }
            candidates[keep - 1].0
        }
    }
}

/// Sampling from the whole softmax(`logits` / `temperature`) in id order: no sort of the
/// vocabulary (a sort of 32k candidates per token cost more than a small model's decode step).
fn sample_all(logits: &[f32], temperature: f32, rng: &mut Rng) -> usize {
    let max = log_softmax::max(logits);
    if !max.is_finite() {
        return argmax(logits);
    }
    let mut weights = vec![0f32; logits.len()];
    let total = log_softmax::exp_sum(logits, max, 1.0 / temperature, Some(&mut weights));
    let mut target = rng.next_f64() * total;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let w = f64::from(w);
        if target < w {
            return i;
        }
        target -= w;
        last = Some(i);
    }
    // Rounding left some target over: the last token with any weight.
    last.unwrap_or_else(|| argmax(logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_words_and_penalty_follow_transformers() {
        let mut logits = vec![1.0, 2.0, -1.0, 0.5];
        ban_bad_words(&mut logits, &[vec![1], vec![0, 3], vec![2, 0]], &[5, 0]);
        assert_eq!(logits[1], f32::NEG_INFINITY);
        assert_eq!(logits[3], f32::NEG_INFINITY); // prefix [0] matched
        assert_eq!(logits[0], 1.0); // prefix [2] not matched
        let mut logits = vec![1.0, -1.0, 2.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 1], 2.0);
        assert_eq!(logits, vec![0.5, -2.0, 2.0]);
    }

    #[test]
    fn greedy_takes_the_first_maximum_and_logprob_normalises() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let lp = log_prob(&[0.0, 0.0], 0);
        assert!((lp - (0.5f32).ln()).abs() < 1e-6);
    }

    #[test]
    fn sampling_the_whole_vocabulary_follows_the_softmax() {
        let logits = [0.0f32, 1.0, f32::NEG_INFINITY, 2.0];
        let sampling = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 5,
        };
        let mut rng = Rng::new(5);
        let mut counts = [0usize; 4];
        for _ in 0..20000 {
            counts[choose(&logits, &sampling, &mut rng)] += 1;
        }
        assert_eq!(counts[2], 0);
        let total: f64 = [0.0f64, 1.0, 2.0].iter().map(|l| l.exp()).sum();
        for (id, logit) in [(0, 0.0f64), (1, 1.0), (3, 2.0)] {
            let share = counts[id] as f64 / 20000.0;
            assert!((share - logit.exp() / total).abs() < 0.02, "{id}: {share}");
        }
    }

    #[test]
    fn top_log_probs_are_sorted_and_normalised() {
        let logits = [1.0, 3.0, 2.0, 3.0];
        let top = top_log_probs(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((top[0].1 - log_prob(&logits, 1)).abs() < 1e-6);
        assert!((top[2].1 - log_prob(&logits, 2)).abs() < 1e-6);
        assert_eq!(top_log_probs(&logits, 9).len(), 4);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let logits = vec![0.0, 5.0, 4.9, -3.0];
        let sampling = Sampling::Sample {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| choose(&logits, &sampling, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert!(a.iter().all(|&t| t == 1 || t == 2));
        assert!(a.contains(&1) && a.contains(&2));
        // top-p small enough keeps only the most likely token.
        let narrow = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.1,
            seed: 1,
        };
        let mut rng = Rng::new(1);
        assert!((0..20).all(|_| choose(&logits, &narrow, &mut rng) == 1));
    }
}
