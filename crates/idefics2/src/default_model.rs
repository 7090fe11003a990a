//! The default model (`assets/idefics2-tiny-shapes`, 13 MB) embedded in the library, so that an
//! installed binary (`cargo install --path crates/idefics2-cli`) answers from any directory
//! without the repository it was built from. The loaders read model directories (memory-mapped
//! safetensors, JSON beside them), so the files are written once into the user data directory
//! and opened from there.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folder name of the default model.
pub const NAME: &str = "idefics2-tiny-shapes";

macro_rules! embedded {
    ($($file:literal),* $(,)?) => {
        &[$(($file, include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../assets/idefics2-tiny-shapes/",
            $file
        )))),*]
    };
}

/// Every file of the model directory.
const FILES: &[(&str, &[u8])] = embedded![
    "added_tokens.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The directory of the default model, written from the binary on first use:
/// `<data dir>/models/idefics2-tiny-shapes-<content hash>` (another build's model never stands
/// in for this one's). The data directory is `$IDEFICS2_DATA_DIR`, else the platform's user data
/// directory (`$XDG_DATA_HOME/idefics2` or `~/.local/share/idefics2` on Linux).
pub fn default_model_dir() -> Result<PathBuf> {
    let dir = data_dir()?
        .join("models")
        .join(format!("{NAME}-{:016x}", content_hash()));
    if is_complete(&dir) {
        return Ok(dir);
    }
    // Written beside and renamed into place, so that a second process starting at the same time
    // never opens a half-written file.
    let parent = dir.parent().unwrap_or(&dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging = parent.join(format!(".{NAME}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (name, bytes) in FILES {
        let path = staging.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another process got there first: its copy is the same.
        Err(_) if is_complete(&dir) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(source) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(Error::Io { path: dir, source })
        }
    }
}

fn is_complete(dir: &Path) -> bool {
    FILES.iter().all(|(name, bytes)| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64)
    })
}

/// FNV-1a over every file's name and bytes (13 MB: a few milliseconds).
fn content_hash() -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (name, bytes) in FILES {
        for byte in name.bytes().chain(bytes.iter().copied()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// `$IDEFICS2_DATA_DIR`, else the platform's user data directory joined with `idefics2`.
pub fn data_dir() -> Result<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("IDEFICS2_DATA_DIR") {
        return Ok(dir);
    }
    let base = if cfg!(target_os = "windows") {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|home| home.join("Library/Application Support"))
    } else {
        env("XDG_DATA_HOME").or_else(|| env("HOME").map(|home| home.join(".local/share")))
    };
    base.map(|base| base.join("idefics2")).ok_or_else(|| {
        Error::DefaultModel(
            "no user data directory to unpack it into: set IDEFICS2_DATA_DIR or HOME, or pass \
             --model"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_every_file_of_the_asset_directory() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets")
            .join(NAME);
        let mut on_disk: Vec<String> = std::fs::read_dir(&assets)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn writes_the_model_once_into_the_data_directory() {
        let dir = default_model_dir().unwrap();
        assert!(is_complete(&dir), "{}", dir.display());
        let written = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, bytes) = FILES
            .iter()
            .find(|(n, _)| *n == "model.safetensors")
            .unwrap();
        assert!(written == *bytes);
        assert_eq!(default_model_dir().unwrap(), dir);
    }
}
