//! The AWQ fixture (`tests/fixtures/tiny-awq`, AutoAWQ's GEMM layout in two shards) is checked and
//! listed as AWQ, asking it for another quantization is an error that says why, and the variants
//! we do not read (gemv, other bit widths, GPTQ, bitsandbytes, no zero points) are refused naming
//! the field and its value. Its numbers against transformers are in `model_parity`.
#![allow(clippy::unwrap_used)]

use super::common;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use idefics2::quant::{QuantFormat, QuantPolicy};
use idefics2::{DeviceChoice, Idefics2, init_device};
use serde_json::{Value, json};

/// A copy of the AWQ fixture whose `quantization_config` is edited by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let source = common::checkpoint("tiny-awq");
    let dir = std::env::temp_dir().join(format!("idefics2-awq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config["quantization_config"].as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    dir
}

fn load_error(dir: &Path, quant: QuantPolicy) -> String {
    let cpu = init_device(DeviceChoice::Cpu).unwrap();
    Idefics2::load_quantized(dir, &cpu, DType::F32, quant)
        .unwrap_err()
        .to_string()
}

#[test]
fn awq_checkpoint_is_checked_and_listed() {
    let report = Idefics2::check(&common::checkpoint("tiny-awq")).unwrap();
    // 2 decoder layers x 7 linear layers; the vision tower and the connector stay float.
    assert_eq!(
        report.quantization,
        "AWQ, 4 bits in groups of 16 (14 linear layers)"
    );
    let float = Idefics2::check(&common::checkpoint("tiny-f32")).unwrap();
    assert_eq!(float.quantization, "none (float weights)");
}

#[test]
fn awq_checkpoint_refuses_another_quantization() {
    let dir = common::checkpoint("tiny-awq");
    for format in [QuantFormat::Q4_32, QuantFormat::Q4 { group: 16 }] {
        let err = load_error(&dir, QuantPolicy::new(Some(format)));
        assert!(
            err.contains("already quantized with AWQ") && err.contains("without asking"),
            "{err}"
        );
    }
}

#[test]
fn unsupported_quantizations_are_named() {
    let cases: [(&str, Value, &str); 6] = [
        (
            "gemv",
            json!({"version": "gemv"}),
            "quantization_config.version `gemv`",
        ),
        ("bits8", json!({"bits": 8}), "quantization_config.bits 8"),
        (
            "nozero",
            json!({"zero_point": false}),
            "quantization_config.zero_point false",
        ),
        (
            "gptq",
            json!({"quant_method": "gptq", "desc_act": false}),
            "quant_method `gptq` is not supported",
        ),
        (
            "bnb",
            json!({"quant_method": "bitsandbytes", "bits": null, "load_in_4bit": true}),
            "quant_method `bitsandbytes` is not supported",
        ),
        (
            "group12",
            json!({"group_size": 12}),
            "quantization_config.group_size 12",
        ),
    ];
    for (name, change, expected) in cases {
        let dir = edited_copy(name, |config| {
            for (key, value) in change.as_object().unwrap() {
                config.insert(key.clone(), value.clone());
            }
        });
        let err = load_error(&dir, QuantPolicy::NONE);
        assert!(err.contains(expected), "{name}: {err}");
        let err = Idefics2::check(&dir).unwrap_err().to_string();
        assert!(err.contains(expected), "{name} (check): {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let dir = edited_copy("absent-version", |config| {
        config.remove("version");
        config.remove("zero_point");
    });
    let cpu = init_device(DeviceChoice::Cpu).unwrap();
    Idefics2::load(&dir, &cpu, DType::F32).expect("version and zero_point default to gemm, true");
    std::fs::remove_dir_all(&dir).unwrap();
}
