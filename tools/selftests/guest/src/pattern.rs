// SPDX-License-Identifier: GPL-2.0-only
//! Deterministic byte patterns for data that must survive a kexec.

/// Fills `buf` with the pattern for `seed`, as if `buf` started at byte
/// `offset` of the stream. Every 8-byte word is a distinct function of the
/// seed and its position, so a shifted, zeroed or stale page is detected.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(seed, offset + i as u64);
    }
}

/// Returns the offset of the first byte of `buf` that differs from the
/// pattern, or `None` when all match.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    buf.iter()
        .enumerate()
        .find(|(i, b)| **b != byte_at(seed, offset + *i as u64))
        .map(|(i, _)| offset + i as u64)
}

fn byte_at(seed: u64, pos: u64) -> u8 {
    let word = pos / 8;
    // splitmix64 of (seed, word)
    let mut z = seed ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z.to_le_bytes()[(pos % 8) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_detection() {
        let mut buf = vec![0u8; 10_000];
        fill(7, 123, &mut buf);
        assert_eq!(first_mismatch(7, 123, &buf), None);
        assert_eq!(first_mismatch(8, 123, &buf), Some(123));
        buf[4321] ^= 1;
        assert_eq!(first_mismatch(7, 123, &buf), Some(123 + 4321));
    }

    #[test]
    fn chunked_fill_equals_whole_fill() {
        let mut whole = vec![0u8; 4096];
        fill(1, 0, &mut whole);
        let mut parts = vec![0u8; 4096];
        let (a, b) = parts.split_at_mut(1000);
        fill(1, 0, a);
        fill(1, 1000, b);
        assert_eq!(whole, parts);
    }

    #[test]
    fn pages_differ() {
        let mut p0 = vec![0u8; 4096];
        let mut p1 = vec![0u8; 4096];
        fill(3, 0, &mut p0);
        fill(3, 4096, &mut p1);
        assert_ne!(p0, p1);
    }
}
