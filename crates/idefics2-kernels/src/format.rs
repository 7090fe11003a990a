//! The quantized weight formats: how many bits a value takes, how values pack into `u32` words,
//! and how many input values share one scale.
//!
//! A weight `[n_out, k_in]` (row-major, like `nn.Linear`'s) is cut along `k_in` into groups of
//! `group` values; the last group of a row is padded when `k_in` is not a multiple of `group`.
//! Value `i` of a word sits in bits `[bits * i, bits * (i + 1))`, so a row's words hold its values
//! in order, and a group never straddles two words.

/// A quantized weight format. `group` is the number of consecutive input values (along `k_in`)
/// sharing one scale (and, for [`QuantFormat::Q4`], one zero point): 32 for our checkpoints, 128 for
/// AWQ ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// Signed 8-bit values, 4 per `u32`, one scale per group: `w = q * scale`.
    Q8 { group: usize },
    /// Unsigned 4-bit values, 8 per `u32`, a scale and a zero point per group:
    /// `w = (q - zero) * scale`.
    Q4 { group: usize },
}

impl QuantFormat {
    /// The format with the default group of 32 values.
    pub const Q8_32: Self = Self::Q8 { group: 32 };
    /// The format with the default group of 32 values.
    pub const Q4_32: Self = Self::Q4 { group: 32 };

    /// Bits per value.
    pub fn bits(self) -> usize {
        match self {
            Self::Q8 { .. } => 8,
            Self::Q4 { .. } => 4,
        }
    }

    /// Values packed in one `u32` word.
    pub fn values_per_word(self) -> usize {
        32 / self.bits()
    }

    /// Input values sharing one scale.
    pub fn group(self) -> usize {
        match self {
            Self::Q8 { group } | Self::Q4 { group } => group,
        }
    }

    /// Whether the format stores a zero point per group.
    pub fn has_zero_point(self) -> bool {
        matches!(self, Self::Q4 { .. })
    }

    /// Groups per output row for `k_in` input values (the last one padded).
    pub fn groups_per_row(self, k_in: usize) -> usize {
        k_in.div_ceil(self.group())
    }

    /// Packed `u32` words per output row for `k_in` input values, padding included.
    pub fn words_per_row(self, k_in: usize) -> usize {
        self.groups_per_row(k_in) * self.group() / self.values_per_word()
    }

    /// Checks that a group holds a whole number of words (so no group straddles two words).
    pub fn validate(self) -> Result<(), String> {
        let group = self.group();
        if group == 0 || !group.is_multiple_of(self.values_per_word()) {
            return Err(format!(
                "{self:?}: the group must be a positive multiple of {} values",
                self.values_per_word()
            ));
        }
        Ok(())
    }

    /// Short name for kernel ids and messages: `q8g32`, `q4g128`.
    pub fn name(self) -> String {
        format!("q{}g{}", self.bits(), self.group())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_arithmetic() {
        let q8 = QuantFormat::Q8_32;
        assert_eq!((q8.values_per_word(), q8.groups_per_row(100)), (4, 4));
        assert_eq!(q8.words_per_row(100), 32);
        let q4 = QuantFormat::Q4 { group: 128 };
        assert_eq!((q4.values_per_word(), q4.groups_per_row(300)), (8, 3));
        assert_eq!(q4.words_per_row(300), 48);
        assert!(QuantFormat::Q4 { group: 12 }.validate().is_err());
        assert!(QuantFormat::Q8 { group: 12 }.validate().is_ok());
        assert!(QuantFormat::Q8 { group: 0 }.validate().is_err());
    }
}
