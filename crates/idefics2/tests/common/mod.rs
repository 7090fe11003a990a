//! Shared helpers for the integration tests: fixture paths, reference tensors, devices.
#![allow(dead_code, clippy::unwrap_used)]

pub mod shapes;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor};
use idefics2::{DeviceChoice, ModelInput, PixelBatch, init_device};
use safetensors::{Dtype, SafeTensors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn checkpoint(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub const CHECKPOINTS: [&str; 2] = ["tiny-f32", "tiny-bf16-sharded"];
pub const CASES: [&str; 4] = ["text_only", "one_image", "multi_image", "batch_left_pad"];

/// A reference tensor: values widened to f64 for comparison, and its shape.
#[derive(Debug, Clone)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl RefTensor {
    pub fn as_i64(&self) -> Vec<i64> {
        self.values.iter().map(|&v| v as i64).collect()
    }
    pub fn as_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

/// All tensors of `tests/fixtures/<checkpoint>/reference/<case>.safetensors`.
pub fn reference_case(checkpoint: &str, case: &str) -> BTreeMap<String, RefTensor> {
    let path = fixtures()
        .join(checkpoint)
        .join("reference")
        .join(format!("{case}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::U8 | Dtype::BOOL => data.iter().map(|&b| b as f64).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (
                name,
                RefTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

/// The model input of a reference case (ids, mask and pixels from the reference processor).
pub fn model_input(case: &BTreeMap<String, RefTensor>) -> ModelInput {
    let ids = &case["input_ids"];
    let (batch, seq) = (ids.shape[0], ids.shape[1]);
    let pixels = case.get("pixel_values").map(|pv| {
        let s = &pv.shape;
        PixelBatch {
            pixel_values: pv.as_f32(),
            pixel_attention_mask: case["pixel_attention_mask"]
                .values
                .iter()
                .map(|&v| v as u8)
                .collect(),
            shape: [s[0], s[1], s[2], s[3], s[4]],
            image_sizes: Vec::new(),
        }
    });
    ModelInput {
        input_ids: ids.values.iter().map(|&v| v as u32).collect(),
        attention_mask: case["attention_mask"]
            .values
            .iter()
            .map(|&v| v as u8)
            .collect(),
        batch,
        seq,
        pixels,
    }
}

pub fn to_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.cast(DType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Largest absolute difference, asserting equal lengths.
pub fn max_abs_diff(what: &str, got: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    got.iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// The GPU device; fails (never skips) without an adapter.
pub fn gpu() -> Device {
    init_device(DeviceChoice::Gpu)
        .expect("a wgpu adapter is required for the GPU tests (lavapipe in CI)")
}
