//! A float matrix `[rows, cols]` kept on the device as blocks of rows that each fit one storage
//! binding. WebGPU adapters bind at most `max_storage_buffer_binding_size` bytes per buffer (128 MiB
//! on lavapipe and by default in browsers), less than the 8B model's embedding table (32003 x 4096:
//! 262 MB in f16) or its f32 MLP weights (14336 x 4096: 235 MB). Rows are looked up by host ids
//! (token ids are known on the host), and products are computed block by block.

use burn::tensor::{Int, Tensor, TensorData};

#[derive(Debug, Clone)]
pub struct RowChunks {
    /// `[rows_per_chunk, cols]` each; the last may be shorter.
    pub chunks: Vec<Tensor<2>>,
    rows_per_chunk: usize,
}

impl RowChunks {
    /// One block: the matrix fits a binding.
    pub fn single(matrix: Tensor<2>) -> Self {
        let rows = matrix.dims()[0];
        Self {
            chunks: vec![matrix],
            rows_per_chunk: rows.max(1),
        }
    }

    /// `chunks` of `rows_per_chunk` rows (the last may have fewer).
    pub fn new(chunks: Vec<Tensor<2>>, rows_per_chunk: usize) -> Self {
        Self {
            chunks,
            rows_per_chunk,
        }
    }

    /// Rows per block so that one block of `cols` values of `elem_bytes` stays within
    /// `max_bytes`.
    pub fn rows_per_chunk(cols: usize, elem_bytes: usize, max_bytes: u64) -> usize {
        let row_bytes = (cols * elem_bytes).max(1) as u64;
        ((max_bytes / row_bytes) as usize).max(1)
    }

    pub fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.dims()[0]).sum()
    }

    pub fn cols(&self) -> usize {
        self.chunks.first().map_or(0, |c| c.dims()[1])
    }

    /// The whole matrix, when it is one block.
    pub fn as_single(&self) -> Option<&Tensor<2>> {
        match self.chunks.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Rows `ids` in order: `[ids.len(), cols]`. Ids must be `< rows()` (checked by callers).
    pub fn gather(&self, ids: &[u32]) -> Tensor<2> {
        let device = self.chunks[0].device();
        let index = |values: Vec<i64>| {
            let n = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [n]), &device)
        };
        if let Some(one) = self.as_single() {
            return one
                .clone()
                .select(0, index(ids.iter().map(|&id| id as i64).collect()));
        }
        // Each block gathers its own ids; a last gather puts the rows back in the ids' order.
        let mut parts = Vec::new();
        let mut order = vec![0i64; ids.len()];
        let mut next = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            let first = c * self.rows_per_chunk;
            let local: Vec<(usize, i64)> = ids
                .iter()
                .enumerate()
                .filter(|&(_, &id)| id as usize / self.rows_per_chunk == c)
                .map(|(position, &id)| (position, (id as usize - first) as i64))
                .collect();
            if local.is_empty() {
                continue;
            }
            for &(position, _) in &local {
                order[position] = next;
                next += 1;
            }
            parts.push(
                chunk
                    .clone()
                    .select(0, index(local.into_iter().map(|(_, row)| row).collect())),
            );
        }
        let single_part = parts.len() == 1;
        let rows = Tensor::cat(parts, 0);
        if single_part {
            rows // one block held every id, in order
        } else {
            rows.select(0, index(order))
        }
    }

    /// `x · selfᵀ`: `[n, cols]` -> `[n, rows]`.
    pub fn matmul_transposed(&self, x: Tensor<2>) -> Tensor<2> {
        let parts: Vec<Tensor<2>> = self
            .chunks
            .iter()
            .map(|w| x.clone().matmul(w.clone().transpose()))
            .collect();
        Tensor::cat(parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn matrix(rows: usize, cols: usize, device: &Device) -> (Vec<f32>, Tensor<2>) {
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::<2>::from_data(TensorData::new(values.clone(), [rows, cols]), device);
        (values, t)
    }

    #[test]
    fn blocks_give_the_same_rows_and_products() {
        let device = Device::flex();
        let (rows, cols) = (11, 6);
        let (values, whole) = matrix(rows, cols, &device);
        let rows_per_chunk = RowChunks::rows_per_chunk(cols, 4, 4 * 6 * 4); // 4 rows a block
        assert_eq!(rows_per_chunk, 4);
        let chunks = (0..rows)
            .step_by(rows_per_chunk)
            .map(|r| {
                let end = (r + rows_per_chunk).min(rows);
                Tensor::<2>::from_data(
                    TensorData::new(values[r * cols..end * cols].to_vec(), [end - r, cols]),
                    &device,
                )
            })
            .collect();
        let split = RowChunks::new(chunks, rows_per_chunk);
        assert_eq!((split.rows(), split.cols()), (rows, cols));
        let single = RowChunks::single(whole);
        for ids in [vec![10u32, 0, 5, 5, 3, 9], vec![1, 2], vec![8]] {
            let got = split
                .gather(&ids)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32");
            let want = single
                .gather(&ids)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32");
            assert_eq!(got, want, "ids {ids:?}");
            let row0 = ids[0] as usize;
            assert_eq!(&got[..cols], &values[row0 * cols..(row0 + 1) * cols]);
        }
        let (_, x) = matrix(3, cols, &device);
        let got = split
            .matmul_transposed(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        let want = single
            .matmul_transposed(x)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(got.len(), 3 * rows);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
