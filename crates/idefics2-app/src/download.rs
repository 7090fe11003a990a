//! A hosted model directory in the browser: its files are fetched once and kept in the Cache API,
//! so a reload reads them from the browser's storage instead of the network.

use idefics2::ModelFiles;

use crate::engine::{CancelFlag, Event};

/// Files a model directory may have besides its weights; only `config.json` is required.
pub const MODEL_FILES: [&str; 10] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

#[cfg(not(target_family = "wasm"))]
pub async fn model_files(
    url: &str,
    _cancel: &CancelFlag,
    _emit: &dyn Fn(Event),
) -> Result<ModelFiles, String> {
    Err(format!(
        "{url}: models are opened from a folder on the desktop; download it first (e.g. with `idefics2 generate --model ORG/NAME`)"
    ))
}

#[cfg(target_family = "wasm")]
pub async fn model_files(
    url: &str,
    cancel: &CancelFlag,
    emit: &dyn Fn(Event),
) -> Result<ModelFiles, String> {
    use std::collections::BTreeSet;

    use idefics2::LoadProgress;

    let base = url.trim_end_matches('/');
    let cache = web::open_cache().await?;
    let mut files = Vec::new();
    let mut done = LoadProgress::default();
    let fetch = async |name: &str, required: bool, done: &mut LoadProgress| {
        if cancel.is_cancelled() {
            return Err("loading was cancelled".to_owned());
        }
        let file_url = format!("{base}/{name}");
        let bytes = web::fetch_cached(&cache, &file_url).await?;
        if bytes.is_none() && required {
            return Err(format!("{file_url}: not found"));
        }
        if let Some(bytes) = &bytes {
            done.tensors += 1;
            done.bytes += bytes.len();
            emit(Event::Progress {
                stage: "downloading",
                done: *done,
            });
        }
        Ok(bytes.map(|b| (name.to_owned(), b)))
    };
    for name in MODEL_FILES {
        if let Some(file) = fetch(name, name == "config.json", &mut done).await? {
            files.push(file);
        }
    }
    let index = files
        .iter()
        .find(|(name, _)| name == "model.safetensors.index.json")
        .map(|(_, bytes)| bytes.clone());
    let shards: BTreeSet<String> = match index {
        Some(bytes) => {
            let index: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{base}/model.safetensors.index.json: {e}"))?;
            index["weight_map"]
                .as_object()
                .map(|map| {
                    map.values()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        }
        None => BTreeSet::from(["model.safetensors".to_owned()]),
    };
    for shard in shards {
        if let Some(file) = fetch(&shard, true, &mut done).await? {
            files.push(file);
        }
    }
    Ok(ModelFiles::memory(base, files))
}

#[cfg(target_family = "wasm")]
mod web {
    use js_sys::Uint8Array;
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    use web_sys::{Cache, Response};

    const CACHE_NAME: &str = "idefics2-models";

    fn describe(e: JsValue) -> String {
        e.as_string()
            .or_else(|| js_sys::JSON::stringify(&e).ok().and_then(|s| s.as_string()))
            .unwrap_or_else(|| format!("{e:?}"))
    }

    pub async fn open_cache() -> Result<Cache, String> {
        let window = web_sys::window().ok_or("no window")?;
        let caches = window.caches().map_err(describe)?;
        let cache = JsFuture::from(caches.open(CACHE_NAME))
            .await
            .map_err(describe)?;
        Ok(cache.unchecked_into())
    }

    /// The file at `url` from the cache, else from the network (then cached); `None` on 404.
    pub async fn fetch_cached(cache: &Cache, url: &str) -> Result<Option<Vec<u8>>, String> {
        let cached = JsFuture::from(cache.match_with_str(url))
            .await
            .map_err(describe)?;
        let response: Response = if cached.is_undefined() || cached.is_null() {
            let window = web_sys::window().ok_or("no window")?;
            let response: Response = JsFuture::from(window.fetch_with_str(url))
                .await
                .map_err(|e| format!("{url}: {}", describe(e)))?
                .unchecked_into();
            if response.status() == 404 {
                return Ok(None);
            }
            if !response.ok() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            let copy = response.clone().map_err(describe)?;
            JsFuture::from(cache.put_with_str(url, &copy))
                .await
                .map_err(|e| format!("caching {url}: {}", describe(e)))?;
            response
        } else {
            cached.unchecked_into()
        };
        let buffer = JsFuture::from(response.array_buffer().map_err(describe)?)
            .await
            .map_err(describe)?;
        Ok(Some(Uint8Array::new(&buffer).to_vec()))
    }
}
