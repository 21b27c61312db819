//! The tap over whole provider fixtures (tests/integration/ai/fixtures, shared with the
//! end-to-end tests): every chunking gives the same usage, streamed and non-streamed agree.

use proptest::prelude::*;

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/integration/ai/fixtures/",
            $name
        ))
        .as_slice()
    };
}

const SSE: &[u8] = b"text/event-stream; charset=utf-8";
const JSON: &[u8] = b"application/json";

fn tap(content_type: &[u8], chunks: &[&[u8]]) -> Observed {
    let mut t = Tap::new(Some(content_type), None);
    for c in chunks {
        t.data(c);
    }
    t.finish()
}

fn pairs() -> Vec<(&'static [u8], &'static [u8], Usage, &'static str)> {
    vec![
        (
            fixture!("openai.json"),
            fixture!("openai.sse"),
            Usage {
                input: 1200,
                output: 300,
                cache_read: 1000,
                cache_write: 0,
                reasoning: 64,
            },
            "gpt-4o-2024-08-06",
        ),
        (
            fixture!("anthropic.json"),
            fixture!("anthropic.sse"),
            Usage {
                input: 1320,
                output: 42,
                cache_read: 1000,
                cache_write: 300,
                reasoning: 0,
            },
            "claude-sonnet-4-5",
        ),
        (
            fixture!("responses.json"),
            fixture!("responses.sse"),
            Usage {
                input: 500,
                output: 80,
                cache_read: 100,
                cache_write: 0,
                reasoning: 40,
            },
            "o3-2025-04-16",
        ),
    ]
}

#[test]
fn streamed_and_whole_fixtures_agree() {
    for (json, sse, usage, model) in pairs() {
        let a = tap(JSON, &[json]);
        let b = tap(SSE, &[sse]);
        assert_eq!(a.usage, Some(usage), "{model} json");
        assert_eq!(b.usage, Some(usage), "{model} sse");
        assert_eq!(a.model.as_deref(), Some(model));
        assert_eq!(b.model.as_deref(), Some(model));
        assert!(!a.stream && b.stream);
    }
    let camel = tap(JSON, &[fixture!("camel.json")]);
    assert_eq!(camel.usage.map(|u| (u.input, u.output)), Some((7, 3)));
    assert_eq!(camel.model, None);
}

#[test]
fn unknown_shapes_are_missing() {
    assert_eq!(tap(SSE, &[fixture!("unknown.sse")]).usage, None);
    assert_eq!(tap(JSON, &[b"{\"ok\":true}"]).usage, None);
    assert_eq!(tap(JSON, &[b"not json"]).usage, None);
    assert_eq!(tap(b"text/html", &[fixture!("openai.sse")]).usage, None);
    // only JSON is kept: a download on an AI route costs no memory
    assert_eq!(tap(b"text/plain", &[fixture!("openai.json")]).usage, None);
    let mut t = Tap::new(Some(b"application/octet-stream"), None);
    t.data(fixture!("openai.json"));
    assert!(matches!(t.mode, Mode::Blind));
    for ct in [
        &b"Application/JSON; charset=utf-8"[..],
        b"application/vnd.api+json",
    ] {
        assert!(tap(ct, &[fixture!("openai.json")]).usage.is_some());
    }
    let mut t = Tap::new(None, None);
    t.data(fixture!("openai.json"));
    assert!(t.finish().usage.is_some(), "no Content-Type: read as JSON");
}

#[test]
fn a_compressed_body_is_not_read() {
    let mut t = Tap::new(Some(JSON), Some(b"gzip"));
    t.data(fixture!("openai.json"));
    assert_eq!(t.finish().usage, None);
    let mut t = Tap::new(Some(JSON), Some(b"identity"));
    t.data(fixture!("openai.json"));
    assert!(t.finish().usage.is_some());
}

#[test]
fn a_json_body_over_the_cap_is_missing() {
    let mut t = Tap::new(Some(JSON), None);
    t.data(b"{\"pad\":\"");
    t.data(&vec![b'x'; MAX_JSON]);
    t.data(b"\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}");
    assert!(matches!(t.mode, Mode::Json(None)), "nothing kept");
    assert_eq!(t.finish().usage, None);
}

#[test]
fn an_aborted_stream_keeps_what_it_saw() {
    let all = fixture!("anthropic.sse");
    let cut = all
        .windows(b"event: message_delta".len())
        .position(|w| w == b"event: message_delta")
        .expect("fixture has a message_delta");
    let o = tap(SSE, &[&all[..cut]]);
    assert_eq!(o.usage.map(|u| (u.input, u.output)), Some((1320, 1)));
}

fn chunked(all: &[u8], cuts: Vec<usize>) -> Vec<&[u8]> {
    let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (all.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(&all[at..c]);
        at = c;
    }
    out.push(&all[at..]);
    out
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_usage(
        which in 0usize..3,
        cuts in prop::collection::vec(0usize..4096, 0..24),
    ) {
        let (json, sse, usage, model) = pairs()[which];
        for (ct, all) in [(SSE, sse), (JSON, json)] {
            let o = tap(ct, &chunked(all, cuts.clone()));
            prop_assert_eq!(o.usage, Some(usage));
            prop_assert_eq!(o.model.as_deref(), Some(model));
        }
    }
}

/// Bytes biased toward SSE syntax and usage JSON: line ends, colons, field names, counts.
fn sse_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"event: message_delta".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b":".to_vec()),
        Just(b"{\"usage\":{\"input_tokens\":5,\"output_tokens\":".to_vec()),
        Just(b"7}}".to_vec()),
        Just("é😀".as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    /// What the fuzz target `sse_scan` checks, on arbitrary SSE-ish bytes: the tap reads the
    /// same whatever the read boundaries.
    #[test]
    fn arbitrary_bytes_read_the_same_in_any_chunks(body in sse_ish(), step in 1usize..17) {
        for ct in [SSE, JSON] {
            let whole = tap(ct, &[&body]);
            let chunks: Vec<&[u8]> = body.chunks(step).collect();
            prop_assert_eq!(tap(ct, &chunks), whole);
        }
    }
}
