//! Host quantization round trips and the plain-burn reference on the CPU device (Flex).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Rng, matmul_f64, relative_error};
use idefics2_kernels::{
    PackedWeight, QuantFormat, dequantize_reference, f16_scale, quant_matmul, quantize, upload,
    uses_kernels,
};

/// The relative error the CPU device's quantized matmul may show for `rows` rows: float
/// arithmetic's, or where q4 runs in 16-bit integers (AVX2, up to 8 rows) what rounding each
/// block of 32 activations to 32767ths of its largest adds (about 1.5e-5 for uniform values).
fn cpu_bound(packed: &PackedWeight, rows: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if idefics2_kernels::cpu_q4_i16::applies(packed)
        && rows <= idefics2_kernels::cpu_quant_matmul::CPU_GEMV_MAX_ROWS
    {
        return 5e-5;
    }
    let _ = (packed, rows);
    1e-5
}

const FORMATS: [QuantFormat; 4] = [
    QuantFormat::Q8_32,
    QuantFormat::Q4_32,
    QuantFormat::Q8 { group: 64 },
    QuantFormat::Q4 { group: 128 },
];

/// Every value comes back within half a step (`scale / 2`) of its group, and the typical error
/// is what uniform rounding predicts (about `scale / sqrt(12)`), so the bound is not vacuous.
#[test]
fn round_trip_stays_within_half_a_step() {
    let mut rng = Rng::new(1);
    for format in FORMATS {
        for (n, k) in [(5, 72), (96, 100), (130, 300), (7, 128)] {
            let weight = rng.values(n * k, 0.05);
            let packed = quantize(&weight, n, k, format).expect("valid format");
            let back = packed.dequantize();
            let groups = packed.groups_per_row();
            let (mut worst_steps, mut mean_steps) = (0.0f64, 0.0f64);
            for (i, (w, b)) in weight.iter().zip(&back).enumerate() {
                let (row, col) = (i / k, i % k);
                let scale = packed.scales[row * groups + col / format.group()];
                let err = f64::from((w - b).abs());
                assert!(
                    err <= f64::from(scale) * 0.5 * (1.0 + 1e-5) + 1e-9,
                    "{format:?} [{n}, {k}] at ({row}, {col}): {w} -> {b}, scale {scale}"
                );
                let steps = err / f64::from(scale);
                worst_steps = worst_steps.max(steps);
                mean_steps += steps / weight.len() as f64;
            }
            println!(
                "{format:?} [{n}, {k}]: worst error {worst_steps:.3} steps, mean {mean_steps:.3}"
            );
            assert!(
                (0.15..0.4).contains(&mean_steps),
                "mean error {mean_steps} steps"
            );
        }
    }
}

/// Zeros stay exactly zero; a constant group comes back within the rounding of its scale up to an
/// f16 number (at most 2^-10 relative, here where the largest code lands on the constant).
#[test]
fn constant_and_zero_groups_round_trip() {
    for format in FORMATS {
        let weight = [vec![0.0f32; 40], vec![0.25; 40], vec![-3.0; 40]].concat();
        let packed = quantize(&weight, 3, 40, format).expect("valid format");
        for (w, b) in weight.iter().zip(packed.dequantize()) {
            assert!((w - b).abs() <= w.abs() / 1024.0, "{format:?}: {w} -> {b}");
        }
    }
}

/// Scales are f16 numbers, rounded up (never down, so no code leaves its range), at least f16's
/// smallest normal number, and a scale f16 cannot hold is an error naming the group.
#[test]
fn scales_are_f16_numbers() {
    for scale in [1e-3f32, 0.0173, 3.0 / 127.0, 1e-9, 60000.0] {
        let rounded = f16_scale(scale).expect("in range");
        assert_eq!(f32::from(half::f16::from_f32(rounded)), rounded, "{scale}");
        assert!(
            rounded >= scale && rounded >= 6.1e-5,
            "{scale} -> {rounded}"
        );
        assert!(
            rounded <= scale.max(6.1e-5) * (1.0 + 1.0 / 1024.0),
            "{scale} -> {rounded}"
        );
    }
    assert_eq!(f16_scale(0.0), Ok(0.0));
    assert!(f16_scale(1e6).is_err() && f16_scale(f32::NAN).is_err());
    let mut weight = vec![0.01f32; 64];
    weight[40] = 1e7; // row 0, group 1 of Q8_32: scale 1e7 / 127, past f16's 65504
    let err = quantize(&weight, 1, 64, QuantFormat::Q8_32).unwrap_err();
    assert!(err.to_string().contains("row 0, group 1"), "{err}");
}

/// The burn-op dequantization matches the host one exactly, and the matmul on the CPU device
/// (which routes to the reference) matches an f64 product of the dequantized weight.
#[test]
fn reference_on_cpu_matches_host() {
    let device = Device::flex();
    let mut rng = Rng::new(2);
    for format in FORMATS {
        for (m, k, n) in [(1, 72, 5), (3, 100, 96), (17, 300, 130)] {
            let weight = rng.values(n * k, 0.05);
            let x = rng.values(m * k, 1.0);
            let packed = quantize(&weight, n, k, format).expect("valid format");
            let w = upload(&packed, &device).expect("upload");
            let dequantized: Vec<f32> = dequantize_reference(&w)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 data");
            assert_eq!(dequantized, packed.dequantize(), "{format:?} [{n}, {k}]");

            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            assert!(!uses_kernels(&xt, &w), "the CPU device has no WGSL kernels");
            let got: Vec<f32> = quant_matmul(xt, &w)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32");
            let want = matmul_f64(&x, &packed.dequantize(), m, k, n);
            let err = relative_error(&got, &want);
            assert!(
                err < cpu_bound(&packed, m),
                "{format:?} m {m} k {k} n {n}: relative error {err}"
            );
        }
    }
}

#[test]
fn three_dimensional_input_keeps_leading_dims() {
    let device = Device::flex();
    let mut rng = Rng::new(3);
    let (k, n) = (100, 7);
    let packed = quantize(&rng.values(n * k, 0.1), n, k, QuantFormat::Q4_32).expect("valid");
    let w = upload(&packed, &device).expect("upload");
    let x = rng.values(2 * 3 * k, 1.0);
    let x3 = Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 3, k]), &device);
    let y3 = quant_matmul(x3, &w);
    assert_eq!(y3.dims(), [2, 3, n]);
    let got: Vec<f32> = y3.into_data().try_to_vec::<f32>().expect("f32");
    let err = relative_error(&got, &matmul_f64(&x, &packed.dequantize(), 6, k, n));
    assert!(err < cpu_bound(&packed, 6), "relative error {err}");
}
