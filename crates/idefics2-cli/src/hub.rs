//! `--model`: a local directory, or a Hugging Face hub id (`org/name`, optional revision)
//! resolved from the standard cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--org--name/{refs,snapshots}`) and downloaded there when
//! missing. With `HF_HUB_OFFLINE=1` the network is never touched.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// Files a model directory needs besides its weights.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
/// Files used when present.
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// The hub cache directory holding `models--org--name` folders.
pub fn hub_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    let home = std::env::var_os("HOME").context("neither HF_HUB_CACHE, HF_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/huggingface/hub"))
}

fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("1" | "true" | "yes" | "on")
    )
}

/// A local directory as is; otherwise a hub id in the cache, downloaded if needed.
pub fn resolve_model(spec: &str, revision: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_id =
        spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.contains('\\');
    if !looks_like_id {
        bail!("model directory {spec} does not exist (and is not a hub id like org/name)");
    }
    let cache_dir = hub_cache_dir()?;
    if let Some(dir) = cached_snapshot(&cache_dir, spec, revision)? {
        return Ok(dir);
    }
    if offline() {
        let missing = missing_files(&cache_dir, spec, revision);
        bail!(
            "HF_HUB_OFFLINE is set and {spec}@{revision} is not complete in {}: missing {}",
            cache_dir.display(),
            missing.join(", ")
        );
    }
    download(&cache_dir, spec, revision)
}

/// The snapshot folder of `id@revision` when every file it needs is there.
pub fn cached_snapshot(cache_dir: &Path, id: &str, revision: &str) -> Result<Option<PathBuf>> {
    let Some(snapshot) = snapshot_dir(cache_dir, id, revision) else {
        return Ok(None);
    };
    Ok(missing_in(&snapshot).is_empty().then_some(snapshot))
}

fn repo_dir(cache_dir: &Path, id: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", id.replace('/', "--")))
}

/// `snapshots/<commit>` where the revision is a commit hash or a ref under `refs/`.
fn snapshot_dir(cache_dir: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = repo_dir(cache_dir, id);
    let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        revision.to_string()
    } else {
        std::fs::read_to_string(repo.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Files a complete model directory lacks: required files, the index or single weights file,
/// and every shard the index names.
fn missing_in(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let index = dir.join(INDEX);
    if index.is_file() {
        match shard_names(&index) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
            Err(e) => missing.push(format!("{INDEX} ({e:#})")),
        }
    } else if !dir.join(SINGLE).is_file() {
        missing.push(format!("{SINGLE} or {INDEX}"));
    }
    missing
}

fn missing_files(cache_dir: &Path, id: &str, revision: &str) -> Vec<String> {
    match snapshot_dir(cache_dir, id, revision) {
        Some(dir) => missing_in(&dir),
        None => vec![format!(
            "the snapshot itself ({} has no refs/{revision} or snapshots/<commit>)",
            repo_dir(cache_dir, id).display()
        )],
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let map = json["weight_map"]
        .as_object()
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// Downloads what the model needs into the cache, with a progress bar; `HF_TOKEN` honoured.
fn download(cache_dir: &Path, id: &str, revision: &str) -> Result<PathBuf> {
    let mut builder =
        ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf())).with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .context("starting the Hugging Face hub client")?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo
        .info()
        .with_context(|| format!("looking up {id}@{revision} on the hub"))?;
    let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let has = |f: &str| listed.iter().any(|l| l == f);
    let mut wanted: Vec<String> = REQUIRED
        .iter()
        .chain(OPTIONAL)
        .filter(|f| has(f))
        .map(|f| f.to_string())
        .collect();
    let mut last = None;
    if has(INDEX) {
        let index = repo
            .get(INDEX)
            .with_context(|| format!("downloading {INDEX}"))?;
        wanted.extend(shard_names(&index)?);
        last = Some(index);
    } else if has(SINGLE) {
        wanted.push(SINGLE.to_string());
    } else {
        bail!("{id}@{revision} has no safetensors weights ({SINGLE} or {INDEX})");
    }
    for file in &wanted {
        last = Some(
            repo.get(file)
                .with_context(|| format!("downloading {file} of {id}"))?,
        );
    }
    let dir = last
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("nothing was downloaded")?;
    let missing = missing_in(&dir);
    if !missing.is_empty() {
        bail!(
            "{id}@{revision} is incomplete on the hub: missing {}",
            missing.join(", ")
        );
    }
    Ok(dir)
}
