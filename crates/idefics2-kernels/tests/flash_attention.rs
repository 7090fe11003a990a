//! The flash attention kernel on a wgpu device (lavapipe in CI) against the plain-burn reference
//! on the CPU device: the vision encoder's, the perceiver's and the decoder's masks, grouped
//! heads, head sizes 72/96/128 and small ones, lengths that are not multiples of the workgroup,
//! and split keys. One test function: the first wgpu run of a kernel is slow on lavapipe, so all
//! cases share one process and one device.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Rng, relative_error};
use idefics2_kernels::{
    AttentionMask, MASKED, WgpuCaps, attention, attention_kernel, attention_reference,
    force_attention_rows_per_thread, force_attention_splits, force_plain_loads,
    uses_attention_kernel,
};

/// Largest tolerated `max |kernel - reference| / max |reference|` over the compared rows.
const TOLERANCE: f64 = 1e-4;

struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
    causal: bool,
    window: Option<usize>,
    /// Keys at the start of batch row 1 that are padding (left padding), or every 7th key of
    /// row 1 with `scattered`.
    padded: usize,
    scattered: bool,
    splits: Option<usize>,
}

const fn case(name: &'static str, shape: [usize; 6]) -> Case {
    let [batch, heads, kv_heads, q_len, kv_len, head_dim] = shape;
    Case {
        name,
        batch,
        heads,
        kv_heads,
        q_len,
        kv_len,
        head_dim,
        causal: false,
        window: None,
        padded: 0,
        scattered: false,
        splits: None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // SigLIP: 16 heads of 72 in the real model; padding patches as keys.
        Case {
            scattered: true,
            ..case("vision, padding patches", [2, 3, 3, 37, 37, 72])
        },
        case("vision, no mask, 70 rows", [1, 2, 2, 70, 70, 72]),
        // Perceiver: 64 latents over patches + latents, heads of 96 over fewer key/value heads.
        Case {
            scattered: true,
            ..case("perceiver", [2, 4, 2, 8, 45, 96])
        },
        // Mistral prefill: 32 heads over 8 in the real model, left padding, sliding window.
        Case {
            causal: true,
            window: Some(20),
            padded: 5,
            ..case("decoder prefill, window", [2, 4, 1, 70, 70, 128])
        },
        Case {
            causal: true,
            padded: 3,
            ..case("decoder prefill after a cache", [2, 4, 2, 13, 83, 128])
        },
        Case {
            causal: true,
            window: Some(30),
            ..case("decoder chunk, window", [1, 4, 2, 9, 100, 128])
        },
        // Decoding one token, keys cut into slices as GPUs do.
        Case {
            causal: true,
            padded: 4,
            splits: Some(4),
            ..case("decode, 4 slices", [2, 4, 1, 1, 150, 128])
        },
        Case {
            causal: true,
            window: Some(50),
            splits: Some(7),
            ..case("decode, window, 7 slices", [1, 8, 2, 1, 150, 128])
        },
        Case {
            causal: true,
            splits: Some(3),
            ..case("prefill, 3 slices", [1, 2, 1, 20, 41, 8])
        },
        // The tiny test checkpoints' head sizes.
        Case {
            causal: true,
            window: Some(20),
            padded: 2,
            ..case("tiny decoder", [2, 4, 1, 30, 30, 4])
        },
        case("65 rows", [1, 1, 1, 65, 65, 8]),
    ]
}

#[test]
fn flash_attention_matches_the_reference() {
    let gpu = &Device::wgpu_options()
        .init()
        .expect("a wgpu adapter (lavapipe in CI)");
    let cpu = &Device::flex();
    let caps = WgpuCaps::of(gpu).expect("a wgpu device");
    assert!(caps.runs_quant_kernels(), "{caps:?}");

    let mut rng = Rng::new(11);
    // The adapter's own rows per thread (8 on CPU adapters), then one row per thread as on GPUs.
    // lavapipe shares the K/V loads over its subgroups of 8 lanes where a workgroup is 8 threads
    // and a key row 8 vec4s or a multiple (head sizes 96 and 128 here); the loads every lane makes
    // itself, as other adapters do, are checked too.
    if caps.adapter.starts_with("llvmpipe") {
        assert_eq!(caps.cpu_subgroup_size, Some(8), "{caps:?}");
    }
    let mut settings = vec![(None, false), (Some(1), false)];
    if caps.cpu_subgroup_size.is_some() {
        settings.push((None, true));
    }
    for (rows_per_thread, plain) in settings {
        force_attention_rows_per_thread(rows_per_thread);
        force_plain_loads(plain);
        for case in cases() {
            check(&case, gpu, cpu, &mut rng, rows_per_thread);
        }
    }
    force_attention_rows_per_thread(None);
    force_plain_loads(false);
    routing(gpu, &mut rng);
}

fn check(case: &Case, gpu: &Device, cpu: &Device, rng: &mut Rng, rows_per_thread: Option<usize>) {
    {
        let Case {
            batch,
            heads,
            kv_heads,
            q_len,
            kv_len,
            head_dim: d,
            ..
        } = *case;
        let q = TensorData::new(
            rng.values(batch * heads * q_len * d, 1.0),
            [batch, heads, q_len, d],
        );
        let k = TensorData::new(
            rng.values(batch * kv_heads * kv_len * d, 1.0),
            [batch, kv_heads, kv_len, d],
        );
        let v = TensorData::new(
            rng.values(batch * kv_heads * kv_len * d, 1.0),
            [batch, kv_heads, kv_len, d],
        );
        let valid: Vec<bool> = (0..batch * kv_len)
            .map(|i| {
                let (b, j) = (i / kv_len, i % kv_len);
                b != 1
                    || (if case.scattered {
                        j % 7 != 3
                    } else {
                        j >= case.padded
                    })
            })
            .collect();
        let mask_on = |device: &Device| AttentionMask {
            causal: case.causal,
            window: case.window,
            ..AttentionMask::key_padding(&valid, batch, kv_len, device)
        };
        let scale = (d as f64).powf(-0.5);

        let q_gpu = Tensor::<4>::from_data(q.clone(), gpu);
        let k_gpu = Tensor::<4>::from_data(k.clone(), gpu);
        assert!(uses_attention_kernel(&q_gpu, &k_gpu), "{}", case.name);
        force_attention_splits(case.splits);
        let got = attention_kernel(
            q_gpu,
            k_gpu,
            Tensor::from_data(v.clone(), gpu),
            &mask_on(gpu),
            scale,
        );
        force_attention_splits(None);
        assert_eq!(got.dims(), [batch, q_len, heads * d], "{}", case.name);
        let want = attention_reference(
            Tensor::from_data(q, cpu),
            Tensor::from_data(k, cpu),
            Tensor::from_data(v, cpu),
            &mask_on(cpu),
            scale,
        );
        let (got, want) = (values(got), values(want));

        // Rows whose keys are all masked (left-padding queries) are finite garbage in both.
        let row = heads * d;
        let (mut got_rows, mut want_rows) = (Vec::new(), Vec::new());
        let mut skipped = 0;
        for b in 0..batch {
            for i in 0..q_len {
                let pos = i + kv_len - q_len;
                let sees_a_key = (0..kv_len).any(|j| {
                    valid[b * kv_len + j]
                        && (!case.causal || j <= pos)
                        && case.window.is_none_or(|w| j + w > pos)
                });
                let at = (b * q_len + i) * row;
                assert!(
                    got[at..at + row].iter().all(|x| x.is_finite()),
                    "{}",
                    case.name
                );
                if sees_a_key {
                    got_rows.extend_from_slice(&got[at..at + row]);
                    want_rows.extend(want[at..at + row].iter().map(|&x| f64::from(x)));
                } else {
                    skipped += 1;
                }
            }
        }
        assert!(!got_rows.is_empty(), "{}", case.name);
        let err = relative_error(&got_rows, &want_rows);
        println!(
            "{}, rows per thread {rows_per_thread:?}: [{batch}, {heads}/{kv_heads} heads, {q_len} x {kv_len}, d {d}] relative error {err:e} ({skipped} fully masked rows skipped)",
            case.name
        );
        assert!(err < TOLERANCE, "{}: relative error {err:e}", case.name);
    }
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// `attention` takes the kernel on wgpu for head sizes that are multiples of 4, the reference
/// otherwise, and both agree; a fully masked row stays finite.
fn routing(gpu: &Device, rng: &mut Rng) {
    for d in [6, 8] {
        let shape = [1, 2, 5, d];
        let q = Tensor::<4>::from_data(TensorData::new(rng.values(10 * d, 1.0), shape), gpu);
        let k = Tensor::<4>::from_data(TensorData::new(rng.values(10 * d, 1.0), shape), gpu);
        let v = Tensor::<4>::from_data(TensorData::new(rng.values(10 * d, 1.0), shape), gpu);
        assert_eq!(uses_attention_kernel(&q, &k), d % 4 == 0, "head size {d}");
        let mask = AttentionMask {
            causal: true,
            key_bias: Some(Tensor::from_data(
                TensorData::new(vec![MASKED, MASKED, 0.0, 0.0, 0.0], [1, 5]),
                gpu,
            )),
            window: None,
        };
        let routed = values(attention(q.clone(), k.clone(), v.clone(), &mask, 0.5));
        let reference = values(attention_reference(q, k, v, &mask, 0.5));
        assert!(routed.iter().all(|x| x.is_finite()));
        // Rows 2.. see a key; rows 0 and 1 see none.
        let row = 2 * d;
        let want: Vec<f64> = reference[2 * row..].iter().map(|&x| f64::from(x)).collect();
        let err = relative_error(&routed[2 * row..], &want);
        assert!(err < TOLERANCE, "head size {d}: relative error {err:e}");
    }
}
