//! The loader on a checkpoint of the real idefics2-8b layout and shapes: bf16, sharded with an
//! index, 34 GB of tensor data as sparse files (no disk or memory used), checked without loading.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use idefics2::{Error, Idefics2};

/// The real idefics2-8b `config.json`.
const CONFIG: &str = idefics2::synthetic::IDEFICS2_8B_CONFIG;

/// Every tensor of idefics2-8b by its hub name, as the transformers state dict names them.
fn hub_tensors() -> Vec<(String, Vec<usize>)> {
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| t.push((name, shape.to_vec()));
    let v = "model.vision_model";
    add(
        format!("{v}.embeddings.patch_embedding.weight"),
        &[1152, 3, 14, 14],
    );
    add(format!("{v}.embeddings.patch_embedding.bias"), &[1152]);
    add(
        format!("{v}.embeddings.position_embedding.weight"),
        &[4900, 1152],
    );
    for i in 0..27 {
        let p = format!("{v}.encoder.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), &[1152, 1152]);
            add(format!("{p}.self_attn.{proj}.bias"), &[1152]);
        }
        for norm in ["layer_norm1", "layer_norm2"] {
            add(format!("{p}.{norm}.weight"), &[1152]);
            add(format!("{p}.{norm}.bias"), &[1152]);
        }
        add(format!("{p}.mlp.fc1.weight"), &[4304, 1152]);
        add(format!("{p}.mlp.fc1.bias"), &[4304]);
        add(format!("{p}.mlp.fc2.weight"), &[1152, 4304]);
        add(format!("{p}.mlp.fc2.bias"), &[1152]);
    }
    add(format!("{v}.post_layernorm.weight"), &[1152]);
    add(format!("{v}.post_layernorm.bias"), &[1152]);
    let c = "model.connector";
    add(
        format!("{c}.modality_projection.gate_proj.weight"),
        &[14336, 1152],
    );
    add(
        format!("{c}.modality_projection.up_proj.weight"),
        &[14336, 1152],
    );
    add(
        format!("{c}.modality_projection.down_proj.weight"),
        &[4096, 14336],
    );
    let r = format!("{c}.perceiver_resampler");
    add(format!("{r}.latents"), &[64, 4096]);
    for i in 0..3 {
        let p = format!("{r}.layers.{i}");
        for norm in [
            "input_latents_norm",
            "input_context_norm",
            "post_attention_layernorm",
        ] {
            add(format!("{p}.{norm}.weight"), &[4096]);
        }
        add(format!("{p}.self_attn.q_proj.weight"), &[1536, 4096]);
        add(format!("{p}.self_attn.k_proj.weight"), &[384, 4096]);
        add(format!("{p}.self_attn.v_proj.weight"), &[384, 4096]);
        add(format!("{p}.self_attn.o_proj.weight"), &[4096, 1536]);
        add(format!("{p}.mlp.gate_proj.weight"), &[16384, 4096]);
        add(format!("{p}.mlp.up_proj.weight"), &[16384, 4096]);
        add(format!("{p}.mlp.down_proj.weight"), &[4096, 16384]);
    }
    add(format!("{r}.norm.weight"), &[4096]);
    let m = "model.text_model";
    add(format!("{m}.embed_tokens.weight"), &[32003, 4096]);
    for i in 0..32 {
        let p = format!("{m}.layers.{i}");
        add(format!("{p}.self_attn.q_proj.weight"), &[4096, 4096]);
        add(format!("{p}.self_attn.k_proj.weight"), &[1024, 4096]);
        add(format!("{p}.self_attn.v_proj.weight"), &[1024, 4096]);
        add(format!("{p}.self_attn.o_proj.weight"), &[4096, 4096]);
        add(format!("{p}.mlp.gate_proj.weight"), &[14336, 4096]);
        add(format!("{p}.mlp.up_proj.weight"), &[14336, 4096]);
        add(format!("{p}.mlp.down_proj.weight"), &[4096, 14336]);
        add(format!("{p}.input_layernorm.weight"), &[4096]);
        add(format!("{p}.post_attention_layernorm.weight"), &[4096]);
    }
    add(format!("{m}.norm.weight"), &[4096]);
    add("lm_head.weight".into(), &[32003, 4096]);
    t
}

/// Writes a safetensors file whose data section is a hole (sparse): header only on disk.
fn write_sparse_shard(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = BTreeMap::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut file = File::create(path).unwrap();
    file.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&json).unwrap();
    file.set_len((8 + json.len() + offset) as u64).unwrap();
}

fn write_checkpoint(dir: &Path, tensors: &[(String, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let shards: Vec<&[(String, Vec<usize>)]> = tensors.chunks(tensors.len().div_ceil(4)).collect();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        write_sparse_shard(&dir.join(&file), shard);
        for (name, _) in shard.iter() {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn the_8b_layout_checks_and_a_wrong_one_is_fully_listed() {
    let dir = std::env::temp_dir().join(format!("idefics2-8b-layout-{}", std::process::id()));
    let tensors = hub_tensors();
    write_checkpoint(&dir, &tensors);
    let report = Idefics2::check(&dir).unwrap();
    let (count, bytes) = (report.tensors, report.stored_bytes);
    assert_eq!(count, tensors.len());
    // 8.4e9 parameters in bf16.
    assert!(
        (16_000_000_000..17_500_000_000).contains(&bytes),
        "{bytes} bytes"
    );

    // A checkpoint written for another width: every tensor of the text decoder is named.
    let mut wrong = tensors.clone();
    wrong.retain(|(name, _)| name != "model.text_model.layers.31.mlp.down_proj.weight");
    for (name, shape) in wrong.iter_mut() {
        if name.ends_with("input_layernorm.weight") {
            *shape = vec![5120];
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    write_checkpoint(&dir, &wrong);
    match Idefics2::check(&dir).unwrap_err() {
        Error::Weights {
            missing,
            unexpected,
            mismatched,
        } => {
            assert_eq!(
                missing,
                vec!["model.text_model.layers.31.mlp.down_proj.weight".to_string()]
            );
            assert!(unexpected.is_empty());
            assert_eq!(mismatched.len(), 32);
            assert!(
                mismatched
                    .iter()
                    .all(|m| m.expected == vec![4096] && m.found == vec![5120])
            );
        }
        other => panic!("unexpected error {other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
