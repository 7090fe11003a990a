//! `idefics2 quantize`: a model directory in, the same directory with its linear layers packed
//! (see [`crate::quant`]) out. Tensors are read, quantized and written one at a time, so the host
//! holds at most one float tensor beside the mapped input.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use burn::tensor::{DType, Device};
use serde_json::{Map, Value};

use crate::config::{Idefics2Config, read_to_string};
use crate::error::{Error, Result};
use crate::model::Idefics2;
use crate::quant::{QuantPolicy, QuantizationConfig, StoredQuant, packed_names};
use crate::weights::{TensorLoader, WeightFiles};

/// What [`quantize_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeSummary {
    pub quantized_layers: usize,
    pub input_bytes: usize,
    pub output_bytes: usize,
}

/// One tensor of the output file, in write order.
enum Planned {
    /// Copied as stored.
    Copy(String),
    /// Packed words, scales or zero points of one linear layer (`part` 0, 1, 2).
    Packed { layer: usize, part: usize },
}

pub fn quantize_checkpoint(
    model_dir: &Path,
    out_dir: &Path,
    policy: QuantPolicy,
) -> Result<QuantizeSummary> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if policy.format.is_none() {
        return Err(Error::QuantConfig(
            "no format given: quantize to q8 or q4".into(),
        ));
    }
    let config_path = model_dir.join("config.json");
    let config = Idefics2Config::from_file(&config_path)?;
    config.validate(&config_path)?;
    if config.quantization_config.is_some() {
        return Err(Error::Config {
            path: config_path,
            message: "the checkpoint is already quantized".into(),
        });
    }
    if out_dir.join("config.json").exists() {
        return Err(Error::QuantConfig(format!(
            "{} already holds a model: choose an empty or new directory",
            out_dir.display()
        )));
    }
    let files = WeightFiles::open(model_dir)?;

    // A check pass over the model lists the layers the policy quantizes and validates the
    // checkpoint before anything is written.
    let device = Device::flex();
    let mut check =
        TensorLoader::new(&files, &device, DType::F32, true).with_quant(policy, StoredQuant::Float);
    Idefics2::build(&config, &mut check, &device, DType::F32);
    let layers = check.quantized_layers().to_vec();
    check.finish()?;

    let mut plan = Vec::new();
    let mut header = Map::new();
    let mut offset = 0usize;
    let mut add = |header: &mut Map<String, Value>,
                   name: &str,
                   dtype: &str,
                   shape: Vec<usize>,
                   bytes: usize| {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    };
    let weight_names: std::collections::BTreeMap<String, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, (prefix, ..))| (format!("{prefix}.weight"), i))
        .collect();
    for name in files.names() {
        if let Some(&layer) = weight_names.get(name) {
            let (prefix, n_out, k_in, format) = &layers[layer];
            let names = packed_names(prefix);
            let groups = format.groups_per_row(*k_in);
            let words = format.words_per_row(*k_in);
            add(
                &mut header,
                &names[0],
                "I32",
                vec![*n_out, words],
                4 * n_out * words,
            );
            // Scales are f16 numbers (see idefics2_kernels::f16_scale) and zero points whole
            // numbers up to 15: both stored as F16, exactly.
            add(
                &mut header,
                &names[1],
                "F16",
                vec![*n_out, groups],
                2 * n_out * groups,
            );
            plan.push(Planned::Packed { layer, part: 0 });
            plan.push(Planned::Packed { layer, part: 1 });
            if format.has_zero_point() {
                add(
                    &mut header,
                    &names[2],
                    "F16",
                    vec![*n_out, groups],
                    2 * n_out * groups,
                );
                plan.push(Planned::Packed { layer, part: 2 });
            }
        } else {
            let dtype = files
                .dtype(name)
                .map(|d| format!("{d:?}"))
                .unwrap_or_default();
            let shape = files.shape(name).unwrap_or_default().to_vec();
            let bytes = files.bytes(name).map_or(0, <[u8]>::len);
            add(&mut header, name, &dtype, shape, bytes);
            plan.push(Planned::Copy(name.to_string()));
        }
    }
    let output_bytes = offset;

    fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let final_path = out_dir.join("model.safetensors");
    let partial_path = out_dir.join("model.safetensors.partial");
    let mut out = BufWriter::new(File::create(&partial_path).map_err(io_error(&partial_path))?);
    let mut header_bytes =
        serde_json::to_vec(&Value::Object(header)).map_err(|source| Error::Json {
            path: final_path.clone(),
            source,
        })?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let write = |out: &mut BufWriter<File>, bytes: &[u8]| {
        out.write_all(bytes).map_err(io_error(&partial_path))
    };
    write(&mut out, &(header_bytes.len() as u64).to_le_bytes())?;
    write(&mut out, &header_bytes)?;
    let mut current: Option<(usize, crate::quant::PackedWeight)> = None;
    for item in &plan {
        match item {
            Planned::Copy(name) => write(&mut out, files.bytes(name).unwrap_or_default())?,
            Planned::Packed { layer, part } => {
                if current.as_ref().is_none_or(|(l, _)| l != layer) {
                    let (prefix, n_out, k_in, format) = &layers[*layer];
                    let values = files.f32_values(&format!("{prefix}.weight"))?;
                    let packed = idefics2_kernels::quantize(&values, *n_out, *k_in, *format)
                        .map_err(|e| Error::Quant {
                            name: prefix.clone(),
                            message: e.to_string(),
                        })?;
                    current = Some((*layer, packed));
                }
                let Some((_, packed)) = &current else {
                    unreachable!("set above")
                };
                let halves = |values: &[f32]| -> Vec<u8> {
                    values
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect()
                };
                let bytes: Vec<u8> = match part {
                    0 => packed.words.iter().flat_map(|w| w.to_le_bytes()).collect(),
                    1 => halves(&packed.scales),
                    _ => halves(&packed.zeros_f32()),
                };
                write(&mut out, &bytes)?;
            }
        }
    }
    out.flush().map_err(io_error(&partial_path))?;
    drop(out);
    fs::rename(&partial_path, &final_path).map_err(io_error(&final_path))?;

    // config.json with quantization_config; the other small files as they are.
    let mut config_json: Value =
        serde_json::from_str(&read_to_string(&config_path)?).map_err(|source| Error::Json {
            path: config_path.clone(),
            source,
        })?;
    if let Value::Object(map) = &mut config_json {
        map.insert(
            "quantization_config".into(),
            serde_json::to_value(QuantizationConfig::from_policy(&policy)).unwrap_or(Value::Null),
        );
    }
    let out_config = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_json).unwrap_or_default();
    for entry in fs::read_dir(model_dir).map_err(io_error(model_dir))? {
        let entry = entry.map_err(io_error(model_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = name == "config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || !entry.path().is_file();
        if !skip {
            fs::copy(entry.path(), out_dir.join(&name)).map_err(io_error(&entry.path()))?;
        }
    }
    // config.json last: its presence marks a complete directory.
    fs::write(&out_config, text).map_err(io_error(&out_config))?;
    Ok(QuantizeSummary {
        quantized_layers: layers.len(),
        input_bytes: files.stored_bytes(),
        output_bytes,
    })
}
