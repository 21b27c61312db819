use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;
use crate::config::{Canary, KeyPart, Share};

/// A token's claims, without signing one.
struct Claimed(HashMap<&'static str, String>);

impl Claims for Claimed {
    fn claim_str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }

    fn claim_number(&self, _: &str) -> Option<f64> {
        None
    }
}

fn sub(s: &str) -> Claimed {
    Claimed(HashMap::from([("sub", s.to_string())]))
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A split of upstreams named `up0`, `up1`, … (upstream index = position) with `weights`.
fn canary(weights: &[u32], override_header: Option<&'static str>) -> Canary {
    Canary {
        split: weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Share {
                upstream: i,
                name: format!("up{i}"),
                weight: w,
            })
            .collect(),
        key: vec![KeyPart::Claim("sub".into())],
        override_header: override_header.map(HeaderName::from_static),
    }
}

fn placement(weights: &[u32]) -> Placement {
    let heaviest = (0..weights.len())
        .rev()
        .max_by_key(|&i| weights[i])
        .unwrap_or(0);
    Placement::new("test", heaviest, &canary(weights, None))
}

fn pick(p: &Placement, subject: &str) -> (usize, Cause) {
    let (i, cause) = p.decide("test", &mut HeaderMap::new(), Some(&sub(subject)), IP);
    (p.shares[i].upstream, cause)
}

fn subjects(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("instance-{i:05}")).collect()
}

#[test]
fn siphash_24_reference_vectors() {
    // the paper's key 00..0f; messages 00, 00 01, … (vectors from the reference implementation)
    let key = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
    let hash = |n: u8| {
        let mut h = SipHasher24::new(key);
        h.write(&(0..n).collect::<Vec<u8>>());
        h.finish()
    };
    assert_eq!(hash(0), 0x726f_db47_dd0e_0e31);
    assert_eq!(hash(1), 0x74f8_39c5_93dc_67fd);
    assert_eq!(hash(8), 0x93f5_f579_9a93_2462);
    assert_eq!(hash(15), 0xa129_ca61_49be_45e5);
    assert_eq!(hash(63), 0x958a_324c_eb06_4572);
}

#[test]
fn placement_is_pinned_across_versions() {
    // Changing any of these moves real users between backend versions at the next deploy:
    // the hash, its keys and the scoring are a contract, not an implementation detail.
    let mut h = SipHasher24::new(KEY);
    h.write(b"8f6e4253-58ce-42b9-869c-97f5c2287ad2");
    assert_eq!(h.finish(), PINNED_KEY_HASH);
    let p = placement(&[50, 50]);
    let got: Vec<usize> = (0..16)
        .map(|i| pick(&p, &format!("instance-{i:05}")).0)
        .collect();
    assert_eq!(got, PINNED_PLACES);
}

const PINNED_KEY_HASH: u64 = 0xc7f9_1991_5c64_01f6;
const PINNED_PLACES: [usize; 16] = [1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1];

#[test]
fn split_is_within_two_points_of_the_weights() {
    let subjects = subjects(10_000);
    // every two-way split in whole percent, and a few wider ones (deterministic: the subjects
    // are fixed, so this cannot flake, and a broken hash fails it)
    let two_way: Vec<Vec<u32>> = (1..100).map(|w| vec![w, 100 - w]).collect();
    let wider: Vec<Vec<u32>> = vec![vec![10, 30, 60], vec![1, 1, 1, 1], vec![1, 2, 3, 1000]];
    for weights in two_way.iter().chain(&wider) {
        let p = placement(weights);
        let mut counts = vec![0usize; weights.len()];
        for s in &subjects {
            let (i, cause) = pick(&p, s);
            assert_eq!(cause, Cause::Hash);
            counts[i] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = 100.0 * f64::from(w) / f64::from(total);
            let got = 100.0 * counts[i] as f64 / subjects.len() as f64;
            assert!(
                (got - want).abs() <= 2.0,
                "weights {weights:?}: up{i} got {got:.2}%, want {want:.2}% ± 2"
            );
        }
    }
}

#[test]
fn one_key_one_upstream_in_every_process() {
    // a placement built anew (another worker, process, reload) places every key the same
    let (a, b) = (placement(&[5, 95]), placement(&[5, 95]));
    for s in subjects(2_000) {
        let first = pick(&a, &s);
        for _ in 0..3 {
            assert_eq!(pick(&a, &s), first, "{s}");
        }
        assert_eq!(pick(&b, &s), first, "{s}");
    }
}

#[test]
fn no_key_goes_to_the_heaviest() {
    let p = placement(&[5, 95, 95]);
    let (i, cause) = p.decide("test", &mut HeaderMap::new(), None::<&Claimed>, IP);
    assert_eq!(
        (p.shares[i].upstream, cause),
        (1, Cause::NoKey),
        "first of the heaviest"
    );
    let other = Claimed(HashMap::from([("realm", "saas".to_string())]));
    let (i, cause) = p.decide("test", &mut HeaderMap::new(), Some(&other), IP);
    assert_eq!((p.shares[i].upstream, cause), (1, Cause::NoKey));
}

#[test]
fn client_ip_and_header_keys() {
    let mut c = canary(&[50, 50], None);
    c.key = vec![KeyPart::ClientIp];
    let p = Placement::new("public", 0, &c);
    let mut seen = [0usize; 2];
    for i in 0..200u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, i));
        let (a, cause) = p.decide("public", &mut HeaderMap::new(), None::<&Claimed>, ip);
        assert_eq!(cause, Cause::Hash);
        let (b, _) = p.decide("public", &mut HeaderMap::new(), None::<&Claimed>, ip);
        assert_eq!(a, b);
        seen[a] += 1;
    }
    assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
    c.key = vec![KeyPart::Header(HeaderName::from_static("x-instance"))];
    let p = Placement::new("r", 0, &c);
    let (_, cause) = p.decide("r", &mut HeaderMap::new(), None::<&Claimed>, IP);
    assert_eq!(cause, Cause::NoKey);
    let mut h = HeaderMap::new();
    h.insert("x-instance", HeaderValue::from_static("i-1"));
    assert_eq!(p.decide("r", &mut h, None::<&Claimed>, IP).1, Cause::Hash);
}

#[test]
fn override_header_names_an_upstream_of_the_split_only() {
    let p = Placement::new("test", 1, &canary(&[5, 95], Some("x-canary-upstream")));
    let s = subjects(50)
        .into_iter()
        .find(|s| pick(&p, s).0 == 1)
        .expect("a subject on up1");
    let mut h = HeaderMap::new();
    h.insert("x-canary-upstream", HeaderValue::from_static("up0"));
    let (i, cause) = p.decide("test", &mut h, Some(&sub(&s)), IP);
    assert_eq!((p.shares[i].upstream, cause), (0, Cause::Override));
    assert!(h.is_empty(), "the override header never goes upstream");
    // a name outside the split is ignored (and stripped all the same)
    h.insert("x-canary-upstream", HeaderValue::from_static("admin"));
    let (i, cause) = p.decide("test", &mut h, Some(&sub(&s)), IP);
    assert_eq!((p.shares[i].upstream, cause), (1, Cause::Hash));
    assert!(h.is_empty());
    // not configured: an ordinary header, neither honoured nor removed
    let p = placement(&[5, 95]);
    h.insert("x-canary-upstream", HeaderValue::from_static("up0"));
    let (i, cause) = p.decide("test", &mut h, Some(&sub(&s)), IP);
    assert_eq!((p.shares[i].upstream, cause), (1, Cause::Hash));
    assert_eq!(h.len(), 1);
}

#[test]
fn decisions_are_counted_by_upstream_and_cause() {
    let p = Placement::new(
        "counted-route",
        1,
        &canary(&[5, 95], Some("x-canary-upstream")),
    );
    let count = |up: &str, cause: &str| {
        CANARY_DECISIONS
            .with_label_values(&["counted-route", up, cause])
            .get()
    };
    let mut h = HeaderMap::new();
    h.insert("x-canary-upstream", HeaderValue::from_static("up0"));
    assert_eq!(p.choose("counted-route", &mut h, Some(&sub("a")), IP), 0);
    assert_eq!(
        p.choose("counted-route", &mut HeaderMap::new(), None::<&Claimed>, IP),
        1
    );
    assert_eq!(count("up0", "override"), 1);
    assert_eq!(count("up1", "no_key"), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Raising one weight moves keys only to that upstream; lowering it only away from it.
    #[test]
    fn weight_changes_move_keys_one_way(
        weights in prop::collection::vec(1u32..1000, 2..5),
        which in 0usize..5,
        delta in 1u32..1000,
    ) {
        let j = which % weights.len();
        let before = placement(&weights);
        let mut raised = weights.clone();
        raised[j] += delta;
        let after = placement(&raised);
        for s in subjects(500) {
            let (old, new) = (pick(&before, &s).0, pick(&after, &s).0);
            // (lowering j is the same pair read backwards: a key that moves was on j)
            prop_assert!(new == old || new == j, "{s}: {old} -> {new}, raised {j}");
        }
    }

    /// Adding an upstream to a split takes keys only to itself.
    #[test]
    fn a_new_upstream_takes_keys_only_to_itself(
        weights in prop::collection::vec(1u32..1000, 1..4),
        added in 1u32..1000,
    ) {
        let before = placement(&weights);
        let mut more = weights.clone();
        more.push(added);
        let after = placement(&more);
        for s in subjects(300) {
            let (old, new) = (pick(&before, &s).0, pick(&after, &s).0);
            prop_assert!(new == old || new == weights.len(), "{s}: {old} -> {new}");
        }
    }

    /// The streaming hasher is SipHash-2-4 whatever way the bytes are fed.
    #[test]
    fn hasher_is_streaming(bytes in prop::collection::vec(any::<u8>(), 0..80), cut in 0usize..80) {
        let cut = cut.min(bytes.len());
        let mut one = SipHasher24::new(KEY);
        one.write(&bytes);
        let mut two = SipHasher24::new(KEY);
        two.write(&bytes[..cut]);
        two.write(&bytes[cut..]);
        let streamed = two.finish();
        prop_assert_eq!(one.finish(), streamed);
        // and the same function as the standard library's (deprecated, so not relied on) one
        #[allow(deprecated)]
        let mut std = std::hash::SipHasher::new_with_keys(KEY.0, KEY.1);
        std::hash::Hasher::write(&mut std, &bytes);
        prop_assert_eq!(std::hash::Hasher::finish(&std), streamed);
    }
}
