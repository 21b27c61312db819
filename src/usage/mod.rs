//! AI usage read off a response as it streams past (no I/O here: the engine feeds the bytes
//! it is already sending to the client, see `engine::body`). A [`Tap`] never delays or alters a
//! byte — it only looks at each read after the fact — and never holds a whole body:
//! - `text/event-stream` responses go through the incremental [`sse::Scanner`] (one event at
//!   a time, each capped at [`sse::MAX_EVENT`]);
//! - a JSON response (`application/json`, `…+json`, or no `Content-Type`) is taken as one
//!   document, kept up to [`MAX_JSON`] bytes and parsed at its end (beyond that, or
//!   compressed, its usage is *missing*);
//! - anything else (a file, an HTML error page) is not kept at all: usage *missing*. Only
//!   JSON bodies cost memory, so a route serving large downloads does not buffer them.
//!
//! Each document goes to [`extract::Accum`], which knows the providers' shapes. A shape it
//! does not know gives no usage (`None`, logged as `usage_source = "missing"`), never zeros.

pub mod extract;
pub mod sse;

use extract::Accum;

/// A non-streamed JSON body is parsed only up to this size: usage sits in small bodies, and a
/// larger one must not cost the gateway its size in memory.
pub const MAX_JSON: usize = 4 << 20;

/// Token counts of one response. `input` counts every prompt token, cached ones included (the
/// providers' conventions are normalised in [`extract`]); `cache_read` and `cache_write` are
/// the parts of it read from and written to the provider's prompt cache; `reasoning` is the
/// part of `output` spent thinking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    /// What a token budget charges: every input and output token.
    pub fn billable(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// What a tap saw of one response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// the model the response names (None when it names none)
    pub model: Option<String>,
    /// None: the response reported no usage the tap recognised
    pub usage: Option<Usage>,
    /// the response was an event stream
    pub stream: bool,
}

enum Mode {
    Sse(Box<sse::Scanner>),
    /// the body so far; None once it outgrew [`MAX_JSON`]
    Json(Option<Vec<u8>>),
    /// a body the tap cannot read (compressed)
    Blind,
}

/// Watches one response body.
pub struct Tap {
    mode: Mode,
    acc: Accum,
}

impl Tap {
    /// A tap for a response with these `Content-Type` and `Content-Encoding` headers.
    pub fn new(content_type: Option<&[u8]>, content_encoding: Option<&[u8]>) -> Self {
        let encoded = content_encoding
            .is_some_and(|e| !e.is_empty() && !e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        let essence = content_type.map(|t| {
            let e = t.split(|&b| b == b';').next().unwrap_or_default();
            e.trim_ascii().to_ascii_lowercase()
        });
        let mode = match essence.as_deref() {
            _ if encoded => Mode::Blind,
            Some(b"text/event-stream") => Mode::Sse(Box::default()),
            None | Some(b"application/json") => Mode::Json(Some(Vec::new())),
            Some(e) if e.ends_with(b"+json") => Mode::Json(Some(Vec::new())),
            Some(_) => Mode::Blind,
        };
        Tap {
            mode,
            acc: Accum::default(),
        }
    }

    /// One read of the body, as it is sent to the client.
    pub fn data(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Sse(s) => {
                let acc = &mut self.acc;
                s.feed(chunk, |e| event(acc, e.data));
            }
            Mode::Json(buf) => {
                if let Some(b) = buf {
                    if b.len() + chunk.len() > MAX_JSON {
                        *buf = None;
                    } else {
                        b.extend_from_slice(chunk);
                    }
                }
            }
            Mode::Blind => {}
        }
    }

    /// The body ended (or the client went away): what was seen so far.
    pub fn finish(mut self) -> Observed {
        let stream = matches!(self.mode, Mode::Sse(_));
        match &mut self.mode {
            Mode::Sse(s) => {
                let acc = &mut self.acc;
                s.finish(|e| event(acc, e.data));
            }
            Mode::Json(Some(b)) => {
                if let Ok(v) = serde_json::from_slice(b) {
                    self.acc.document(&v);
                }
            }
            Mode::Json(None) | Mode::Blind => {}
        }
        Observed {
            model: self.acc.model().map(str::to_string),
            usage: self.acc.usage(),
            stream,
        }
    }
}

/// One SSE event's data. Only events that may carry a count or, until one is known, the model
/// are parsed: a long completion's text deltas cost a substring search each, not a JSON parse.
fn event(acc: &mut Accum, data: &[u8]) {
    let wanted = contains(data, b"_tokens\"")
        || contains(data, b"Tokens\"")
        || contains(data, b"TokenCount\"")
        || (acc.model().is_none() && contains(data, b"\"model\""));
    if !wanted {
        return;
    }
    if let Ok(v) = serde_json::from_slice(data) {
        acc.document(&v);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests;
