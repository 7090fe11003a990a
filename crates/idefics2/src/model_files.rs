//! The files of a model directory, wherever they are: a folder on disk (memory-mapped weights) or
//! a set of named byte buffers (the browser, which has no file system: files the user picked or
//! dropped, or downloaded ones kept in the Cache API). Every loader reads through this, so one code
//! path serves the desktop, the server and the web.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A model directory's files, by file name (`config.json`, `model.safetensors`, ...).
#[derive(Clone)]
pub enum ModelFiles {
    Dir(PathBuf),
    Memory {
        /// Shown in errors in place of a directory (a URL, or the name the user picked).
        label: String,
        files: Arc<BTreeMap<String, Arc<[u8]>>>,
    },
}

impl fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "ModelFiles::Dir({})", dir.display()),
            Self::Memory { label, files } => {
                write!(f, "ModelFiles::Memory({label}: {:?})", files.keys())
            }
        }
    }
}

/// The bytes of one file: mapped from disk or shared from memory.
pub enum FileBytes {
    #[cfg(not(target_family = "wasm"))]
    Mapped(memmap2::Mmap),
    Shared(Arc<[u8]>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_family = "wasm"))]
            Self::Mapped(map) => map,
            Self::Shared(bytes) => bytes,
        }
    }
}

impl ModelFiles {
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        Self::Dir(path.into())
    }

    /// In-memory files; names are taken without any leading folders (`a/b/config.json` is
    /// `config.json`), as when the user picks the files of a folder in the browser.
    pub fn memory(
        label: impl Into<String>,
        files: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Self {
        let files = files
            .into_iter()
            .map(|(name, bytes)| (base_name(&name).to_owned(), Arc::<[u8]>::from(bytes)))
            .collect();
        Self::Memory {
            label: label.into(),
            files: Arc::new(files),
        }
    }

    /// Where `name` is, for messages: a path on disk, or `label/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        match self {
            Self::Dir(dir) => dir.join(name),
            Self::Memory { label, .. } => Path::new(label).join(name),
        }
    }

    /// A short name for the model: the folder's name or the label.
    pub fn label(&self) -> String {
        match self {
            Self::Dir(dir) => dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            Self::Memory { label, .. } => label.clone(),
        }
    }

    /// The whole file; `Ok(None)` when there is no such file.
    pub fn read(&self, name: &str) -> io::Result<Option<FileBytes>> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(FileBytes::Shared(bytes.into()))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Self::Memory { files, .. } => Ok(files.get(name).cloned().map(FileBytes::Shared)),
        }
    }

    /// The file as UTF-8 text; `Ok(None)` when absent.
    pub fn read_text(&self, name: &str) -> io::Result<Option<String>> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// A weight file: memory-mapped on disk (no copy into the heap), shared in memory.
    pub fn map(&self, name: &str) -> io::Result<FileBytes> {
        match self {
            Self::Dir(dir) => map_file(&dir.join(name)),
            Self::Memory { files, .. } => files
                .get(name)
                .cloned()
                .map(FileBytes::Shared)
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("no file named {name}"))
                }),
        }
    }
}

/// A file on disk, memory-mapped (read into memory where there is no mmap: wasm).
pub fn map_file(path: &Path) -> io::Result<FileBytes> {
    #[cfg(not(target_family = "wasm"))]
    {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only; a checkpoint rewritten while we read it is the
        // user's race, as with every mmap-based loader.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        Ok(FileBytes::Mapped(map))
    }
    #[cfg(target_family = "wasm")]
    std::fs::read(path).map(|bytes| FileBytes::Shared(bytes.into()))
}

fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_files_drop_folders_and_report_absence() {
        let files = ModelFiles::memory("picked", [("tiny/config.json".to_owned(), b"{}".to_vec())]);
        assert_eq!(
            files.read_text("config.json").unwrap().as_deref(),
            Some("{}")
        );
        assert!(files.read("tokenizer.json").unwrap().is_none());
        assert!(files.map("model.safetensors").is_err());
        assert_eq!(files.path("x.json"), PathBuf::from("picked/x.json"));
    }
}
