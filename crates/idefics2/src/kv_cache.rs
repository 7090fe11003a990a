//! The decoder's key/value cache: one preallocated `[batch, kv_heads, capacity, head_dim]` pair
//! per layer, written in place at the current position (no per-token concatenation).

use burn::tensor::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::error::{Error, Result};

#[derive(Debug)]
struct LayerCache {
    k: Tensor<4>,
    v: Tensor<4>,
}

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    batch: usize,
    capacity: usize,
    /// Positions already written (the same for every row: rows are left-padded).
    len: usize,
}

impl KvCache {
    pub fn new(
        config: &TextConfig,
        batch: usize,
        capacity: usize,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let shape = [
            batch,
            config.num_key_value_heads(),
            capacity,
            config.head_dim(),
        ];
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerCache {
                k: Tensor::zeros(shape, (device, dtype)),
                v: Tensor::zeros(shape, (device, dtype)),
            })
            .collect();
        Self {
            layers,
            batch,
            capacity,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Checks that `new_tokens` more positions fit.
    pub fn reserve(&self, new_tokens: usize) -> Result<()> {
        if self.len + new_tokens > self.capacity {
            return Err(Error::TooManyTokens {
                tokens: self.len + new_tokens,
                limit: self.capacity,
                what: "KV cache capacity".into(),
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` of `layer` at positions `len..len+seq` and returns the keys and values of
    /// positions `0..len+seq`.
    ///
    /// # Shapes
    /// `k`, `v`: `[batch, kv_heads, seq, head_dim]` -> `[batch, kv_heads, len + seq, head_dim]`
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let _profile = crate::profile::scope("kv cache writes", || k.device());
        let [batch, kv_heads, seq, head_dim] = k.dims();
        let (start, end) = (self.len, self.len + seq);
        let cache = &mut self.layers[layer];
        let write = [0..batch, 0..kv_heads, start..end, 0..head_dim];
        cache.k.inplace(|t| t.slice_assign(write.clone(), k));
        cache.v.inplace(|t| t.slice_assign(write, v));
        let read = [0..batch, 0..kv_heads, 0..end, 0..head_dim];
        (
            cache.k.clone().slice(read.clone()),
            cache.v.clone().slice(read),
        )
    }

    /// Marks `seq` more positions as written (after every layer appended them).
    pub(crate) fn advance(&mut self, seq: usize) {
        self.len += seq;
    }

    /// A new cache whose rows are copies of `rows`: each source's positions are placed so that
    /// they end at the new length (the largest count), and the positions before them are padding
    /// for the attention mask to hide. How a batch that decodes in lockstep takes
    /// in a new row, lets a finished one go (freeing its memory) or drops padding that no row
    /// needs any more.
    ///
    /// # Shapes
    /// each source: `[batch, kv_heads, len, head_dim]` -> `[rows.len(), kv_heads, capacity, head_dim]`
    pub fn gather(rows: &[RowSource<'_>], capacity: usize) -> Result<Self> {
        let Some(first) = rows.first() else {
            return Err(Error::InputShape {
                what: "KV cache rows to gather (none)".into(),
                expected: vec![1],
                got: vec![0],
            });
        };
        let len = rows.iter().map(RowSource::count).max().unwrap_or(0);
        for row in rows {
            if row.positions.end > row.cache.len || row.row >= row.cache.batch {
                return Err(Error::InputShape {
                    what: "KV cache row to gather (row, end of its positions)".into(),
                    expected: vec![row.cache.batch, row.cache.len],
                    got: vec![row.row, row.positions.end],
                });
            }
        }
        if len > capacity {
            return Err(Error::TooManyTokens {
                tokens: len,
                limit: capacity,
                what: "KV cache capacity".into(),
            });
        }
        let layers = (0..first.cache.layers.len())
            .map(|layer| {
                let template = &first.cache.layers[layer].k;
                let [_, kv_heads, _, head_dim] = template.dims();
                let shape = [rows.len(), kv_heads, capacity, head_dim];
                let options = (&template.device(), template.dtype());
                let mut k = Tensor::zeros(shape, options);
                let mut v = Tensor::zeros(shape, options);
                for (index, row) in rows.iter().enumerate().filter(|(_, r)| r.count() > 0) {
                    let source = &row.cache.layers[layer];
                    let from = [
                        row.row..row.row + 1,
                        0..kv_heads,
                        row.positions.clone(),
                        0..head_dim,
                    ];
                    let to = [
                        index..index + 1,
                        0..kv_heads,
                        len - row.count()..len,
                        0..head_dim,
                    ];
                    k = k.slice_assign(to.clone(), source.k.clone().slice(from.clone()));
                    v = v.slice_assign(to, source.v.clone().slice(from));
                }
                LayerCache { k, v }
            })
            .collect();
        Ok(Self {
            layers,
            batch: rows.len(),
            capacity,
            len,
        })
    }
}

/// Positions of one row of a cache for [`KvCache::gather`].
#[derive(Debug, Clone)]
pub struct RowSource<'a> {
    pub cache: &'a KvCache,
    pub row: usize,
    pub positions: std::ops::Range<usize>,
}

impl<'a> RowSource<'a> {
    /// The last `used` positions: where a row of a lockstep batch keeps its keys.
    pub fn last(cache: &'a KvCache, row: usize, used: usize) -> Self {
        Self {
            cache,
            row,
            positions: cache.len.saturating_sub(used)..cache.len,
        }
    }

    /// The first `len` positions: a prefix that a prompt starting with the same tokens reuses.
    pub fn first(cache: &'a KvCache, row: usize, len: usize) -> Self {
        Self {
            cache,
            row,
            positions: 0..len,
        }
    }

    fn count(&self) -> usize {
        self.positions.len()
    }
}
