//! A fast hash for the maps on the per-call path.
//!
//! std's default SipHash resists collision flooding, which matters only when
//! an adversary chooses the keys that are *inserted*. The maps using this
//! hash are keyed by values this process assigns (session keys, call ids) or
//! by a fixed set known at start-up (module names); a peer's input only ever
//! looks keys up. For them SipHash costs about a hundred instructions per
//! lookup for nothing, several times per call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` using [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Multiply-rotate hashing (the scheme of rustc's FxHash), one word at a time.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_finds_every_key_it_holds_and_no_other() {
        let mut map: FastMap<String, usize> = FastMap::default();
        let keys: Vec<String> = (0..500).map(|i| format!("module-{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), i);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k), Some(&i));
        }
        assert_eq!(map.get("module-500"), None);
        assert_eq!(map.get(""), None);
    }

    #[test]
    fn strings_differing_only_past_the_first_word_hash_differently() {
        let hash = |s: &str| {
            let mut h = FastHasher::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_ne!(hash("abcdefgh1"), hash("abcdefgh2"));
        assert_ne!(hash("abcdefgh"), hash("abcdefgh\0"));
    }
}
