//! Prefix reuse: the KV caches of recent requests (prompt and answer), kept so that a request
//! that starts with the same tokens and images (the next turn of a chat) continues from them
//! instead of encoding its images and prefilling again. Least recently used entries go first
//! when the store is over its budget of positions.

use crate::kv_cache::KvCache;
use crate::pixels::PixelBatch;

struct Entry {
    ids: Vec<u32>,
    /// Content hashes of the images (crops) whose tokens are in `ids`, in order.
    images: Vec<u64>,
    cache: KvCache,
    last_used: u64,
}

/// What a new request can reuse: the first `len` positions of an entry, covering its first
/// `images` crops.
pub(super) struct Reuse<'a> {
    pub cache: &'a KvCache,
    pub len: usize,
    pub images: usize,
}

pub(super) struct PrefixStore {
    entries: Vec<Entry>,
    budget_tokens: usize,
    clock: u64,
    /// The `<image>` id and how many of them one crop takes.
    image_token: u32,
    image_seq_len: usize,
}

impl PrefixStore {
    pub fn new(budget_tokens: usize, image_token: u32, image_seq_len: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget_tokens,
            clock: 0,
            image_token,
            image_seq_len: image_seq_len.max(1),
        }
    }

    /// Keeps `cache` (one row holding the positions of `ids`), evicting the least recently used
    /// entries beyond the budget.
    pub fn insert(&mut self, ids: Vec<u32>, images: Vec<u64>, cache: KvCache) {
        if ids.len() > self.budget_tokens || ids.is_empty() {
            return;
        }
        self.clock += 1;
        // A newer entry that extends an older one makes the older one useless.
        self.entries.retain(|e| !ids.starts_with(&e.ids));
        self.entries.push(Entry {
            ids,
            images,
            cache,
            last_used: self.clock,
        });
        while self.entries.iter().map(|e| e.ids.len()).sum::<usize>() > self.budget_tokens {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }

    /// The longest reusable prefix of a prompt of `ids` with images `images` (at least one
    /// token is left to prefill, and an image's token run is never cut).
    pub fn find(&mut self, ids: &[u32], images: &[u64]) -> Option<Reuse<'_>> {
        let mut best: Option<(usize, usize, usize)> = None;
        for (index, entry) in self.entries.iter().enumerate() {
            let mut len = entry
                .ids
                .iter()
                .zip(ids)
                .take_while(|(a, b)| a == b)
                .count()
                .min(ids.len() - 1);
            let mut image_tokens = ids[..len]
                .iter()
                .filter(|&&t| t == self.image_token)
                .count();
            while len > 0 && image_tokens % self.image_seq_len != 0 {
                len -= 1;
                if ids[len] == self.image_token {
                    image_tokens -= 1;
                }
            }
            let crops = image_tokens / self.image_seq_len;
            let same_images = crops <= entry.images.len()
                && crops <= images.len()
                && entry.images[..crops] == images[..crops];
            if len > 0 && same_images && best.is_none_or(|(_, l, _)| len > l) {
                best = Some((index, len, crops));
            }
        }
        let (index, len, images) = best?;
        self.clock += 1;
        let entry = &mut self.entries[index];
        entry.last_used = self.clock;
        Some(Reuse {
            cache: &entry.cache,
            len,
            images,
        })
    }

    /// Positions held.
    pub fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.ids.len()).sum()
    }
}

/// Hashes of each crop's real pixels (FNV-1a over the values and the real size), in order.
pub(super) fn image_hashes(pixels: Option<&PixelBatch>) -> Vec<u64> {
    let Some(pixels) = pixels else {
        return Vec::new();
    };
    let [_, _, channels, height, width] = pixels.shape;
    let sizes = pixels.image_sizes.first();
    (0..pixels.image_count())
        .map(|index| {
            let (h, w) = sizes
                .and_then(|s| s.get(index).copied())
                .unwrap_or((height, width));
            let image = pixels.image(index);
            let mut hash = 0xcbf2_9ce4_8422_2325u64;
            let mut add = |value: u64| {
                hash = (hash ^ value).wrapping_mul(0x0100_0000_01b3);
            };
            add(h as u64);
            add(w as u64);
            for c in 0..channels {
                for y in 0..h.min(height) {
                    let row = (c * height + y) * width;
                    for &v in &image[row..row + w.min(width)] {
                        add(u64::from(v.to_bits()));
                    }
                }
            }
            hash
        })
        .collect()
}

/// Crops `from..` of a one-request pixel batch.
pub(super) fn crops_from(pixels: &PixelBatch, from: usize) -> Option<PixelBatch> {
    let [batch, count, c, h, w] = pixels.shape;
    if batch != 1 || from >= count {
        return None;
    }
    Some(PixelBatch {
        pixel_values: pixels.pixel_values[from * c * h * w..].to_vec(),
        pixel_attention_mask: pixels.pixel_attention_mask[from * h * w..].to_vec(),
        shape: [1, count - from, c, h, w],
        image_sizes: pixels
            .image_sizes
            .iter()
            .map(|s| s.get(from..).unwrap_or_default().to_vec())
            .collect(),
    })
}
