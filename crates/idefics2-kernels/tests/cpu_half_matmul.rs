//! The CPU device's f16/bf16 linear layers against the plain-burn reference (a half tensor cast
//! to f32, burn's matmul) and an f64 product, on odd shapes, both paths (GEMV up to 8 rows,
//! widen-then-matmul above).

mod common;

use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{Rng, matmul_f64, relative_error, to_vec};
use idefics2_kernels::cpu_half_matmul::{
    HalfDtype, HalfWeight, cpu_half_matmul, half_gemv, half_matmul_reference,
};

#[test]
fn half_matmul_matches_the_plain_burn_reference_on_odd_shapes() {
    let cpu = Device::flex();
    let mut rng = Rng::new(7);
    let mut worst = 0f64;
    for dtype in [HalfDtype::F16, HalfDtype::Bf16] {
        // K around the 256-value chunk and the 8 lanes; N around the 16 rows per task.
        for (n_out, k_in) in [(1, 1), (5, 7), (17, 255), (33, 257), (130, 300), (16, 512)] {
            let w = HalfWeight::from_f32(&rng.values(n_out * k_in, 0.5), n_out, k_in, dtype);
            let widened = w.to_f32();
            for rows in [1, 3, 8, 9, 40] {
                let x = rng.values(rows * k_in, 1.0);
                let exact = matmul_f64(&x, &widened, rows, k_in, n_out);
                let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, k_in]), &cpu);
                let got = to_vec(cpu_half_matmul(xt.clone(), &w));
                let reference = to_vec(half_matmul_reference(xt, &w, &cpu));
                let case = format!("{dtype:?} [{rows}, {k_in}] x [{n_out}, {k_in}]^T");
                let error = relative_error(&got, &exact);
                let reference_error = relative_error(&reference, &exact);
                // f32 sums of up to 512 products: both within a few f32 steps of the exact sum.
                assert!(error < 1e-5, "{case}: {error:e} from the f64 product");
                assert!(
                    reference_error < 1e-5,
                    "{case}: the reference is {reference_error:e} from the f64 product"
                );
                let ours: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
                let against_reference = relative_error(&reference, &ours);
                assert!(
                    against_reference < 1e-5,
                    "{case}: {against_reference:e} from the reference"
                );
                worst = worst.max(against_reference);
                if rows <= 8 {
                    assert_eq!(half_gemv(&x, rows, &w), got, "{case}: the GEMV itself");
                }
            }
        }
    }
    println!("half matmul: worst relative difference from plain burn {worst:.2e}");
}

#[test]
fn the_reference_really_holds_the_half_dtype() {
    // A value that f16 and bf16 round differently: the reference must see each one's rounding.
    let cpu = Device::flex();
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &cpu);
    for (dtype, expected) in [(HalfDtype::F16, 1.0009766f32), (HalfDtype::Bf16, 1.0)] {
        let w = HalfWeight::from_f32(&[1.001], 1, 1, dtype);
        assert_eq!(dtype.dtype(), HalfDtype::of(dtype.dtype()).unwrap().dtype());
        let y = to_vec(half_matmul_reference(x.clone(), &w, &cpu));
        assert_eq!(y, vec![expected], "{dtype:?}");
        assert_eq!(to_vec(cpu_half_matmul(x.clone(), &w)), vec![expected]);
    }
    assert_eq!(HalfDtype::of(DType::F32), None);
}
