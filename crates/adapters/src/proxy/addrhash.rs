//! A cheap hash for maps keyed by a version's address, looked up on every request
//! (the idle pools, the h2c connections).
//!
//! std's default SipHash resists keys chosen to collide; these keys are the versions'
//! endpoints, which the policy and the admin API set, never a client. A multiply and
//! rotate per word (the hash rustc uses for its own tables) is a tenth of the work.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;

/// A map keyed by a version's address.
pub(super) type AddrMap<V> = HashMap<SocketAddr, V, BuildHasherDefault<AddrHasher>>;
/// A set of versions' addresses.
pub(super) type AddrSet = HashSet<SocketAddr, BuildHasherDefault<AddrHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The hasher of [`AddrMap`] and [`AddrSet`]; not for keys a client chooses.
#[derive(Default)]
pub(super) struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for AddrHasher {
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

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses that differ only in their port, their last octet or their family
    /// land apart, and a map finds each one it holds.
    #[test]
    fn nearby_addresses_hash_apart_and_are_found() {
        let addrs: Vec<SocketAddr> = (0..64u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 8000 + i)))
            .chain((0..64u8).map(|i| SocketAddr::from(([10, 0, 0, i], 8080))))
            .chain((0..8u16).map(|i| SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 8000 + i))))
            .collect();
        let hashes: HashSet<u64> = addrs
            .iter()
            .map(|a| {
                use std::hash::BuildHasher;
                BuildHasherDefault::<AddrHasher>::default().hash_one(a)
            })
            .collect();
        assert_eq!(hashes.len(), addrs.len());
        let map: AddrMap<usize> = addrs.iter().copied().zip(0..).collect();
        for (i, a) in addrs.iter().enumerate() {
            assert_eq!(map.get(a), Some(&i));
        }
    }
}
