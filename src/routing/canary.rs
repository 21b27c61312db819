//! Sticky canaries: a route split across upstreams by weight (`upstream = [{ name, weight }, …]`)
//! sends each request where its canary key places it, so one instance (one `sub`) always sees
//! one version of the backend.
//!
//! The choice is weighted rendezvous hashing (highest random weight): each upstream `i` of the
//! split draws `u_i` in (0, 1) from the key and its own name, scores `-ln(u_i) / w_i`, and the
//! lowest score wins. The scores are exponential races, so upstream `i` wins with probability
//! `w_i / Σw` exactly; and since raising `w_j` only lowers `j`'s score, a weight change moves
//! keys only *to* the upstream whose weight rose (or, lowering it, only away from it) — never
//! between the others, never back and forth. Adding an upstream takes keys only to itself.
//!
//! The draws must be the same in every process and every version of the gateway, or a rolling
//! deploy would reshuffle users: they are SipHash-2-4 (a fixed, published function, implemented
//! here so no library upgrade can change it) under fixed keys. `key_hash = SipHash(K, key)`,
//! then `u_i = SipHash(seed_i, key_hash)` with `seed_i` derived from upstream `i`'s name at
//! config load. A request costs one hash of its key, one short hash and a logarithm per
//! upstream of the split, and no allocation.

use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use prometheus::IntCounter;

use crate::budget::keys::{parts_into, Claims};
use crate::config::{Canary, KeyPart};
use crate::metrics::CANARY_DECISIONS;

/// The fixed SipHash key of canary keys: two arbitrary constants, pinned by the unit tests.
/// Never change them: every key would move to another upstream.
const KEY: (u64, u64) = (0x7761_6574_6167_2d63, 0x7972_616e_6163_2079);

/// Why a request went where it did (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// its canary key placed it
    Hash = 0,
    /// the override header named this upstream
    Override = 1,
    /// it had no key (a claim or header missing): the heaviest upstream
    NoKey = 2,
}

impl Cause {
    const ALL: [Cause; 3] = [Cause::Hash, Cause::Override, Cause::NoKey];

    fn label(self) -> &'static str {
        match self {
            Cause::Hash => "hash",
            Cause::Override => "override",
            Cause::NoKey => "no_key",
        }
    }
}

/// One upstream of a split, as the hot path needs it.
struct Placed {
    /// index into the config's upstreams
    upstream: usize,
    name: String,
    /// this upstream's SipHash key for its draws, from its name
    seed: (u64, u64),
    /// `1 / weight`: a score is `-ln(u) * inv_weight`
    inv_weight: f64,
    /// decisions for it, by `Cause`
    decisions: [IntCounter; 3],
}

/// A split route's placement, computed once per config.
pub(super) struct Placement {
    shares: Vec<Placed>,
    /// position in `shares` of the heaviest (first on a tie): requests without a key
    heaviest: usize,
    key: Vec<KeyPart>,
    override_header: Option<HeaderName>,
}

impl Placement {
    pub(super) fn new(route: &str, heaviest_upstream: usize, c: &Canary) -> Placement {
        let shares: Vec<Placed> = c
            .split
            .iter()
            .map(|s| Placed {
                upstream: s.upstream,
                name: s.name.clone(),
                seed: seed(&s.name),
                inv_weight: 1.0 / f64::from(s.weight),
                decisions: Cause::ALL.map(|cause| {
                    CANARY_DECISIONS.with_label_values(&[route, &s.name, cause.label()])
                }),
            })
            .collect();
        Placement {
            heaviest: shares
                .iter()
                .position(|s| s.upstream == heaviest_upstream)
                .unwrap_or(0),
            shares,
            key: c.key.clone(),
            override_header: c.override_header.clone(),
        }
    }

    /// The upstream for a request: named by the override header (when configured and naming
    /// an upstream of the split), else placed by its key, else (no key) the heaviest. The
    /// override header is removed from `headers` either way: it is addressed to the gateway.
    pub(super) fn choose<C: Claims + ?Sized>(
        &self,
        route_name: &str,
        headers: &mut HeaderMap,
        id: Option<&C>,
        client: IpAddr,
    ) -> usize {
        let (i, cause) = self.decide(route_name, headers, id, client);
        let s = &self.shares[i];
        s.decisions[cause as usize].inc();
        s.upstream
    }

    fn decide<C: Claims + ?Sized>(
        &self,
        route_name: &str,
        headers: &mut HeaderMap,
        id: Option<&C>,
        client: IpAddr,
    ) -> (usize, Cause) {
        if let Some(h) = &self.override_header {
            if let Some(v) = headers.remove(h) {
                let named = self
                    .shares
                    .iter()
                    .position(|s| s.name.as_bytes() == v.as_bytes());
                if let Some(i) = named {
                    return (i, Cause::Override);
                }
                // a name outside the split is ignored: the header may not reach other upstreams
            }
        }
        let mut hasher = SipHasher24::new(KEY);
        if !parts_into(&self.key, route_name, id, headers, client, &mut hasher) {
            return (self.heaviest, Cause::NoKey);
        }
        (self.place(hasher.finish()), Cause::Hash)
    }

    /// The share a key hash is placed on: the lowest `-ln(u_i) / w_i` (the first on a tie).
    fn place(&self, key_hash: u64) -> usize {
        let mut best = (0, f64::INFINITY);
        for (i, s) in self.shares.iter().enumerate() {
            let score = -unit(draw(s.seed, key_hash)).ln() * s.inv_weight;
            if score < best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

/// An upstream's draw for a key: SipHash under the upstream's own key of the key's hash.
fn draw(seed: (u64, u64), key_hash: u64) -> u64 {
    let mut h = SipHasher24::new(seed);
    h.write(&key_hash.to_le_bytes());
    h.finish()
}

/// An upstream's SipHash key, from its name: two hashes under the fixed key, of the name and a
/// NUL (which no config name holds) and a tag byte.
fn seed(name: &str) -> (u64, u64) {
    let half = |tag: u8| {
        let mut h = SipHasher24::new(KEY);
        h.write(name.as_bytes());
        h.write(&[0, tag]);
        h.finish()
    };
    (half(0), half(1))
}

/// A hash as a number in (0, 1): its top 53 bits, centred in their interval (never 0, whose
/// logarithm is -∞, never 1).
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// SipHash-2-4 (Aumasson and Bernstein), streaming, byte at a time: keys are a few dozen bytes.
/// `fmt::Write` so that the budget key writer (`parts_into`) feeds it without building a string.
struct SipHasher24 {
    v: [u64; 4],
    /// bytes not yet compressed, little-endian
    tail: u64,
    len: u64,
}

impl SipHasher24 {
    fn new((k0, k1): (u64, u64)) -> Self {
        SipHasher24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            len: 0,
        }
    }

    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.tail |= u64::from(b) << (8 * (self.len % 8));
            self.len += 1;
            if self.len % 8 == 0 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
            }
        }
    }

    fn finish(mut self) -> u64 {
        let m = ((self.len & 0xff) << 56) | self.tail;
        self.compress(m);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

impl fmt::Write for SipHasher24 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
