//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of `data` folded into 16 bits, added to `initial` (not inverted).
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// The checksum field value for `data` (the field itself must be zero in `data`).
pub fn checksum(data: &[u8]) -> u16 {
    !(sum(data, 0) as u16)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word changes from `old` to `new`.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut s = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Folds a one's complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3 for several words at once: `csum` after words whose `~old + new` sum (one's
/// complement, folded) is `delta` changed ([`update16`] for one word).
#[inline(always)]
pub fn adjust(csum: u16, delta: u16) -> u16 {
    !fold(!csum as u32 + delta as u32)
}

/// Pseudo-header sum for IPv4 TCP/UDP checksums.
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let mut s = sum(&src, 0);
    s = sum(&dst, s);
    s + proto as u32 + len as u32
}

/// Pseudo-header sum for IPv6 upper-layer checksums (RFC 8200 8.1).
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], next: u8, len: u32) -> u32 {
    let mut s = sum(&src, 0);
    s = sum(&dst, s);
    s + (len >> 16) + (len & 0xffff) + next as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example words.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&d, 0), 0xddf2);
    }

    proptest! {
        #[test]
        fn incremental_matches_full(mut data in proptest::collection::vec(any::<u8>(), 4..64), idx in 0usize..30, new in any::<u16>()) {
            let len = data.len() & !1;
            data.truncate(len);
            let i = (idx * 2) % len;
            let old = u16::from_be_bytes([data[i], data[i+1]]);
            let c0 = checksum(&data);
            data[i..i+2].copy_from_slice(&new.to_be_bytes());
            let c1 = checksum(&data);
            let inc = update16(c0, old, new);
            // 0x0000 and 0xffff are the same one's-complement value.
            prop_assert!(inc == c1 || (inc == 0xffff && c1 == 0) || (inc == 0 && c1 == 0xffff));
        }
    }
}
