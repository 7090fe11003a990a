//! The kernels' parameters travel in cubecl's metadata uniform as u64 words.

/// Packs u32 values two per u64 in memory order: cubecl uploads the info words as their
/// little-endian bytes, so a shader's `Params` struct of u32 fields sees the values in order.
pub(crate) fn pack_words(values: &[u32]) -> Vec<u64> {
    values
        .chunks(2)
        .map(|pair| u64::from(pair[0]) | (u64::from(pair.get(1).copied().unwrap_or(0)) << 32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_words_keep_value_order_in_memory() {
        let packed = pack_words(&[1, 2, 3]);
        let bytes: Vec<u8> = packed.iter().flat_map(|w| w.to_le_bytes()).collect();
        let back: Vec<u32> = bytes
            .chunks(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(back, [1, 2, 3, 0]);
    }
}
