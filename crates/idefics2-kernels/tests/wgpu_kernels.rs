//! The WGSL kernels on a wgpu device (lavapipe in CI) against the plain-burn reference on the CPU
//! device, for odd shapes and every format. One test function: the first wgpu run of a kernel
//! is slow on lavapipe, so all cases share one process and one device.

mod common;

use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{Rng, matmul_f64, relative_error, to_vec};
use idefics2_kernels::{
    BlockedFloatWeight, QuantFormat, WgpuCaps, copy_kernel, force_f32_scales,
    force_gemv_quads_per_thread, force_gemv_splits, force_plain_loads, force_tiled_gemm,
    quant_matmul, quant_matmul_kernel, quant_matmul_reference, quantize, upload, uses_kernels,
};

const FORMATS: [QuantFormat; 3] = [
    QuantFormat::Q8_32,
    QuantFormat::Q4_32,
    QuantFormat::Q4 { group: 128 },
];
const ROWS: [usize; 5] = [1, 3, 8, 17, 77];
const K_IN: [usize; 4] = [72, 100, 128, 300];
const N_OUT: [usize; 3] = [5, 96, 130];

/// Largest tolerated `max |kernel - reference| / max |reference|`.
const TOLERANCE: f64 = 1e-4;

#[test]
fn quant_matmul_kernels_match_the_reference() {
    let gpu = Device::wgpu_options()
        .init()
        .expect("a wgpu adapter (lavapipe in CI)");
    let cpu = Device::flex();
    let caps = WgpuCaps::of(&gpu).expect("a wgpu device");
    println!("{caps:?}");
    assert!(caps.runs_quant_kernels(), "{caps:?}");

    let mut rng = Rng::new(7);
    // More than 8 rows: blocks of GEMV rows on CPU adapters (lavapipe), the tiled GEMM on GPUs.
    formats_match(&gpu, &cpu, &mut rng, &ROWS);
    // The tiled GEMM on this adapter too.
    force_tiled_gemm(true);
    formats_match(&gpu, &cpu, &mut rng, &[17, 77]);
    force_tiled_gemm(false);
    // Scales and zero points in f32, as adapters without shader-f16 keep them (lavapipe has it),
    // through the GEMV, its row blocks and the tiled GEMM.
    if caps.shader_f16 {
        force_f32_scales(true);
        formats_match(&gpu, &cpu, &mut rng, &[1, 17]);
        force_tiled_gemm(true);
        formats_match(&gpu, &cpu, &mut rng, &[17]);
        force_tiled_gemm(false);
        force_f32_scales(false);
    }

    // lavapipe shares the GEMV's x loads over its subgroups of 8 lanes (groups of 32): the cases
    // above ran that path. The plain loads, which GPUs and other CPU adapters run, are checked too.
    // The f16 cases here and below run only where the adapter has shader-f16: on lavapipe (CI)
    // they must run, so losing the feature fails instead of skipping them.
    if caps.adapter.starts_with("llvmpipe") {
        assert_eq!(caps.cpu_subgroup_size, Some(8), "{caps:?}");
        assert!(caps.shader_f16, "lavapipe lost shader-f16: {caps:?}");
    }
    if caps.cpu_subgroup_size.is_some() {
        force_plain_loads(true);
        formats_match(&gpu, &cpu, &mut rng, &[1, 8, 17]);
        split_k_matches(&gpu, &cpu, &mut rng);
        force_plain_loads(false);
    }

    split_k_matches(&gpu, &cpu, &mut rng);
    // One column quad per thread, as GPUs run the GEMV (CPU adapters take 4).
    force_gemv_quads_per_thread(Some(1));
    split_k_matches(&gpu, &cpu, &mut rng);
    force_gemv_quads_per_thread(None);
    routed_calls_match(&gpu, &cpu, &mut rng);
    copy_copies(&gpu, &mut rng);

    float_gemv_matches(&gpu, &mut rng);
    if caps.cpu_subgroup_size.is_some() {
        force_plain_loads(true);
        float_gemv_matches(&gpu, &mut rng);
        force_plain_loads(false);
    }
}

/// The float GEMV against an f64 product on odd shapes: K not a multiple of 4 or of a chunk, N
/// not a multiple of 128, rows in blocks of 1 to 64; the weight given in two row blocks and cut into
/// parts of 128 rows by a small binding limit; an f16 input.
fn float_gemv_matches(gpu: &Device, rng: &mut Rng) {
    let mut worst = 0.0f64;
    for (k, n, parts_of_128) in [
        (72, 5, false),
        (45, 130, false),
        (300, 257, false),
        (37, 300, true),
        (1152, 129, false),
    ] {
        let weight = rng.values(n * k, 0.05);
        let split = n / 3; // two row blocks, as the loader keeps a weight beyond one binding
        let blocks: Vec<Tensor<2>> = [(0, split), (split, n)]
            .into_iter()
            .filter(|(a, b)| b > a)
            .map(|(a, b)| {
                Tensor::from_data(
                    TensorData::new(weight[a * k..b * k].to_vec(), [b - a, k]),
                    gpu,
                )
            })
            .collect();
        let max_binding = if parts_of_128 {
            4 * k as u64 * 200
        } else {
            u64::MAX
        };
        let w = BlockedFloatWeight::from_rows(&blocks, max_binding);
        assert_eq!((w.n_out, w.k_in), (n, k));
        if parts_of_128 {
            assert!(
                w.parts.iter().all(|(_, rows)| *rows <= 128),
                "parts of 128 rows"
            );
        }
        for m in [1, 3, 8, 17, 77] {
            let x = rng.values(m * k, 1.0);
            let got = to_vec(w.matmul(Tensor::from_data(TensorData::new(x.clone(), [m, k]), gpu)));
            let err = relative_error(&got, &matmul_f64(&x, &weight, m, k, n));
            assert!(
                err < 1e-5,
                "float GEMV m {m} k {k} n {n}: relative error {err:e}"
            );
            worst = worst.max(err);
        }
        if gpu.supports_dtype(DType::F16) {
            let x = rng.values(2 * k, 1.0);
            let x16 = Tensor::<2>::from_data(TensorData::new(x.clone(), [2, k]), (gpu, DType::F16));
            let got = w.matmul(x16);
            assert_eq!(got.dtype(), DType::F16);
            let err = relative_error(
                &to_vec(got.cast(DType::F32)),
                &matmul_f64(&x, &weight, 2, k, n),
            );
            assert!(
                err < 2e-3,
                "float GEMV f16 input k {k} n {n}: relative error {err:e}"
            );
        }
    }
    println!("float GEMV: worst relative error {worst:e}");
}

/// Every format, K and N of the tables above, for `rows` activation rows.
fn formats_match(gpu: &Device, cpu: &Device, rng: &mut Rng, rows: &[usize]) {
    let mut worst = (0.0f64, String::new());
    let mut scale_dtype = None;
    for format in FORMATS {
        for &k in &K_IN {
            for &n in &N_OUT {
                let weight = rng.values(n * k, 0.05);
                let packed = quantize(&weight, n, k, format).expect("valid format");
                let w_gpu = upload(&packed, gpu).expect("upload");
                let w_cpu = upload(&packed, cpu).expect("upload");
                scale_dtype = Some(w_gpu.tensors().scales.dtype());
                for &m in rows {
                    let x = rng.values(m * k, 1.0);
                    let data = TensorData::new(x, [m, k]);
                    let x_gpu = Tensor::<2>::from_data(data.clone(), gpu);
                    assert!(uses_kernels(&x_gpu, &w_gpu));
                    let got = to_vec(quant_matmul_kernel(x_gpu, &w_gpu));
                    let want: Vec<f64> =
                        to_vec(quant_matmul_reference(Tensor::from_data(data, cpu), &w_cpu))
                            .into_iter()
                            .map(f64::from)
                            .collect();
                    let err = relative_error(&got, &want);
                    let case = format!("{format:?} m {m} k {k} n {n}");
                    assert!(err < TOLERANCE, "{case}: relative error {err:e}");
                    if err > worst.0 {
                        worst = (err, case);
                    }
                }
            }
        }
    }
    println!(
        "rows {rows:?}, {scale_dtype:?} scales: worst relative error {:e} ({})",
        worst.0, worst.1
    );
}

/// The GEMV with K cut into slices (what GPUs get; CPU adapters run one slice), summed after.
fn split_k_matches(gpu: &Device, cpu: &Device, rng: &mut Rng) {
    for (format, k, n, m, splits) in [
        (QuantFormat::Q4_32, 300, 130, 1, 3),
        (QuantFormat::Q8_32, 300, 5, 3, 4),
        (QuantFormat::Q4 { group: 128 }, 300, 96, 8, 2),
        (QuantFormat::Q4_32, 1000, 257, 2, 7),
        // k_in not a multiple of 4: x read as floats.
        (QuantFormat::Q4_32, 45, 9, 2, 1),
        (QuantFormat::Q8_32, 45, 9, 1, 2),
    ] {
        let packed = quantize(&rng.values(n * k, 0.05), n, k, format).expect("valid format");
        let (w_gpu, w_cpu) = (
            upload(&packed, gpu).expect("upload"),
            upload(&packed, cpu).expect("upload"),
        );
        let data = TensorData::new(rng.values(m * k, 1.0), [m, k]);
        force_gemv_splits(Some(splits));
        let got = to_vec(quant_matmul_kernel(
            Tensor::<2>::from_data(data.clone(), gpu),
            &w_gpu,
        ));
        force_gemv_splits(None);
        let want: Vec<f64> = to_vec(quant_matmul_reference(Tensor::from_data(data, cpu), &w_cpu))
            .into_iter()
            .map(f64::from)
            .collect();
        let err = relative_error(&got, &want);
        println!("{format:?} m {m} k {k} n {n}, {splits} K slices: relative error {err:e}");
        assert!(
            err < TOLERANCE,
            "{format:?} m {m} k {k} n {n} split {splits}: {err:e}"
        );
    }
}

/// The bandwidth yardstick copies exactly, also when the grid has to stride (more vec4s than
/// threads in the grid).
fn copy_copies(gpu: &Device, rng: &mut Rng) {
    for n in [4, 4 * 1000, 4 * 300_001] {
        let x = rng.values(n, 1.0);
        let t = Tensor::<1>::from_data(TensorData::new(x.clone(), [n]), gpu);
        let got = copy_kernel(t)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 data");
        assert_eq!(got, x, "copy of {n} floats");
    }
}

/// `quant_matmul` itself on the GPU: a 3-D f32 input (GEMM path), no rows at all, and an f16
/// input (cast to f32 and back), against the reference.
fn routed_calls_match(gpu: &Device, cpu: &Device, rng: &mut Rng) {
    let (k, n) = (100, 130);
    let packed = quantize(&rng.values(n * k, 0.05), n, k, QuantFormat::Q4_32).expect("valid");
    let (w_gpu, w_cpu) = (
        upload(&packed, gpu).expect("upload"),
        upload(&packed, cpu).expect("upload"),
    );
    let data = TensorData::new(rng.values(2 * 9 * k, 1.0), [2, 9, k]);
    let got = quant_matmul(Tensor::<3>::from_data(data.clone(), gpu), &w_gpu);
    assert_eq!(got.dims(), [2, 9, n]);
    let want = quant_matmul(Tensor::<3>::from_data(data, cpu), &w_cpu);
    let want: Vec<f64> = to_vec(want.reshape([18, n]))
        .into_iter()
        .map(f64::from)
        .collect();
    let err = relative_error(&to_vec(got.reshape([18, n])), &want);
    println!("3-D input: relative error {err:e}");
    assert!(err < TOLERANCE, "3-D input: relative error {err:e}");

    let empty = quant_matmul(
        Tensor::<2>::from_data(TensorData::new(Vec::<f32>::new(), [0, k]), gpu),
        &w_gpu,
    );
    assert_eq!(empty.dims(), [0, n]);
    assert!(to_vec(empty).is_empty());

    if gpu.supports_dtype(DType::F16) {
        let data = TensorData::new(rng.values(3 * k, 1.0), [3, k]);
        let x16 = Tensor::<2>::from_data(data.clone(), (gpu, DType::F16));
        let got = quant_matmul(x16, &w_gpu);
        assert_eq!(got.dtype(), DType::F16);
        let x_rounded = Tensor::<2>::from_data(data, cpu)
            .cast(DType::F16)
            .cast(DType::F32);
        let want: Vec<f64> = to_vec(quant_matmul_reference(x_rounded, &w_cpu))
            .into_iter()
            .map(f64::from)
            .collect();
        let err = relative_error(&to_vec(got.cast(DType::F32)), &want);
        println!("f16 input: relative error {err:e}");
        assert!(err < 2e-3, "f16 input: relative error {err:e}");
    }
}
