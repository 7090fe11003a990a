//! Loading fails with one clear error naming every problem: missing, unexpected and misshapen
//! tensors, corrupt files, unsupported dtypes, missing files.
#![allow(clippy::unwrap_used)]

use super::common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::DType;
use idefics2::{DeviceChoice, Error, Idefics2, init_device};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Copies the tiny f32 checkpoint's config and rewrites its weights through `edit`.
fn edited_checkpoint(
    dir: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) {
    let source = common::checkpoint("tiny-f32");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(source.join("config.json"), dir.join("config.json")).unwrap();
    let weights = dir.join("model.safetensors");
    std::fs::copy(source.join("model.safetensors"), &weights).unwrap();
    edit_weights(&weights, edit);
}

/// Rewrites the safetensors file at `path` through `edit` (name -> dtype, shape, bytes).
fn edit_weights(
    path: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut map: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<(String, TensorView)> = map
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn load_error(dir: &Path) -> Error {
    let device = init_device(DeviceChoice::Cpu).unwrap();
    Idefics2::load(dir, &device, DType::F32).unwrap_err()
}

#[test]
fn every_missing_unexpected_and_misshapen_tensor_is_listed() {
    let dir = std::env::temp_dir().join(format!("idefics2-weights-{}", std::process::id()));
    edited_checkpoint(&dir, |map| {
        map.remove("lm_head.weight").unwrap();
        map.remove("model.text_model.norm.weight").unwrap();
        let (d, _, b) = map
            .remove("model.connector.perceiver_resampler.latents")
            .unwrap();
        map.insert(
            "model.connector.perceiver_resampler.latents".into(),
            (d, vec![4, 64], b),
        );
        map.insert(
            "model.extra.weight".into(),
            (Dtype::F32, vec![2], vec![0; 8]),
        );
    });
    let error = load_error(&dir);
    let message = error.to_string();
    match error {
        Error::Weights {
            missing,
            unexpected,
            mismatched,
        } => {
            assert_eq!(
                missing,
                vec![
                    "model.text_model.norm.weight".to_string(),
                    "lm_head.weight".to_string()
                ]
            );
            assert_eq!(unexpected, vec!["model.extra.weight".to_string()]);
            assert_eq!(mismatched.len(), 1);
            assert_eq!(mismatched[0].expected, vec![8, 32]);
            assert_eq!(mismatched[0].found, vec![4, 64]);
        }
        other => panic!("unexpected error {other}"),
    }
    for needle in [
        "missing tensor `lm_head.weight`",
        "unexpected tensor `model.extra.weight`",
        "expected shape [8, 32], found [4, 64]",
    ] {
        assert!(message.contains(needle), "{message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = std::env::temp_dir().join(format!("idefics2-dtype-{}", std::process::id()));
    edited_checkpoint(&dir, |map| {
        let entry = map.get_mut("model.text_model.norm.weight").unwrap();
        entry.0 = Dtype::I32;
    });
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("model.text_model.norm.weight") && message.contains("I32"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_and_missing_files_are_named() {
    let dir = std::env::temp_dir().join(format!("idefics2-corrupt-{}", std::process::id()));
    edited_checkpoint(&dir, |_| {});
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("model.safetensors") && message.contains("not a valid safetensors"),
        "{message}"
    );
    std::fs::remove_file(&path).unwrap();
    let message = load_error(&dir).to_string();
    assert!(
        message.contains("cannot read") && message.contains("model.safetensors"),
        "{message}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let message = load_error(&dir).to_string();
    assert!(message.contains("config.json"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_saved_zero_point_that_is_not_a_4_bit_code_is_named() {
    use idefics2::quant::{QuantFormat, QuantPolicy};
    use idefics2::quant_save::quantize_checkpoint;
    let dir = std::env::temp_dir().join(format!("idefics2-zeros-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = QuantPolicy::new(Some(QuantFormat::Q4_32));
    quantize_checkpoint(&common::checkpoint("tiny-f32"), &dir, policy).unwrap();
    let mut name = String::new();
    edit_weights(&dir.join("model.safetensors"), |map| {
        name = map.keys().find(|n| n.ends_with(".qzeros")).unwrap().clone();
        let entry = map.get_mut(&name).unwrap();
        assert_eq!(entry.0, Dtype::F16);
        // 16.5 in f16: neither whole nor a 4-bit code.
        entry.2[..2].copy_from_slice(&[0x20, 0x4C]);
    });
    let message = load_error(&dir).to_string();
    assert!(
        message.contains(&name) && message.contains("zero point 16.5"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
