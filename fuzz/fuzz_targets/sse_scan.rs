//! The SSE scanner and the usage tap never panic, whatever the bytes and however they are cut
//! into reads, and the scanner hands out the same events for any chunking (the first byte
//! picks the cut points). An event never exceeds the cap.
#![no_main]
use cc_gateway::usage::{sse::Scanner, Tap};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 64;

fn events(chunks: &[&[u8]]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut s = Scanner::new(CAP);
    let mut out = Vec::new();
    let mut push = |e: cc_gateway::usage::sse::Event<'_>| {
        assert!(e.data.len() <= CAP);
        out.push((e.name.to_vec(), e.data.to_vec()));
    };
    for c in chunks {
        s.feed(c, &mut push);
    }
    s.finish(&mut push);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 17) + 1;
    let chunks: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(events(&chunks), events(&[body]));
    for ct in [&b"text/event-stream"[..], b"application/json"] {
        let mut whole = Tap::new(Some(ct), None);
        whole.data(body);
        let mut cut = Tap::new(Some(ct), None);
        for c in &chunks {
            cut.data(c);
        }
        assert_eq!(whole.finish(), cut.finish());
    }
});
