//! Token counts out of the JSON documents AI providers answer with: a whole response body, or
//! one SSE event's data. Every document updates what it reports and leaves the rest alone —
//! the *latest* value of each count wins, counts are never added across documents, because
//! streams repeat them cumulatively (Anthropic's `message_delta.usage.output_tokens` is the
//! running total; OpenAI's final chunk carries the whole usage).
//!
//! Two conventions for input tokens are normalised here:
//! - OpenAI (chat completions `prompt_tokens`, the Responses API `input_tokens` with
//!   `input_tokens_details`): the count *includes* the cached tokens;
//! - Anthropic (`input_tokens` beside `cache_read_input_tokens` and
//!   `cache_creation_input_tokens`) and Bedrock camelCase (`inputTokens` beside
//!   `cacheReadInputTokens`/`cacheWriteInputTokens`): the count *excludes* them.
//!
//! [`Usage::input`] is always the total (cached or not), so `input + output` is every token
//! the request cost the provider, whatever its convention.

use serde_json::Value;

use super::Usage;

/// A model name longer than this is not a model name (it would only bloat logs and labels).
const MAX_MODEL: usize = 256;

/// What the documents of one response reported so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accum {
    model: Option<String>,
    /// input tokens including cached ones (OpenAI convention)
    input_total: Option<u64>,
    /// input tokens excluding cached ones (Anthropic convention)
    input_uncached: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    reasoning: Option<u64>,
}

/// A count as providers send it: a non-negative integer. Anything else (a string, a float, a
/// negative number) is ignored as if absent: a malformed count never fails the client.
fn count(v: Option<&Value>) -> Option<u64> {
    v?.as_u64()
}

fn set(slot: &mut Option<u64>, v: Option<u64>) {
    if v.is_some() {
        *slot = v;
    }
}

impl Accum {
    /// Reads one JSON document.
    pub fn document(&mut self, v: &Value) {
        let nested = |k: &str| v.get(k).filter(|n| n.is_object());
        for holder in [Some(v), nested("message"), nested("response")]
            .into_iter()
            .flatten()
        {
            if let Some(m) = holder.get("model").and_then(Value::as_str) {
                if !m.is_empty() && m.len() <= MAX_MODEL {
                    self.model = Some(m.to_string());
                }
            }
        }
        // chat completions and Anthropic at the top; Anthropic's message_start under
        // `message`; Responses API events under `response`; Bedrock ConverseStream's
        // metadata event under `metadata`
        for holder in [
            Some(v),
            nested("message"),
            nested("response"),
            nested("metadata"),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(u) = holder.get("usage").filter(|u| u.is_object()) {
                self.usage_object(u);
            }
        }
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            self.gemini(u);
        }
    }

    fn usage_object(&mut self, u: &Value) {
        let n = |k: &str| count(u.get(k));
        let p = |p: &str| count(u.pointer(p));
        // OpenAI chat completions
        set(&mut self.input_total, n("prompt_tokens"));
        set(&mut self.output, n("completion_tokens"));
        set(
            &mut self.cache_read,
            p("/prompt_tokens_details/cached_tokens"),
        );
        set(
            &mut self.reasoning,
            p("/completion_tokens_details/reasoning_tokens"),
        );
        // the Responses API (input includes cached) or Anthropic (input excludes them)
        if u.get("input_tokens_details").is_some() {
            set(&mut self.input_total, n("input_tokens"));
            set(
                &mut self.cache_read,
                p("/input_tokens_details/cached_tokens"),
            );
        } else {
            set(&mut self.input_uncached, n("input_tokens"));
        }
        set(&mut self.output, n("output_tokens"));
        set(
            &mut self.reasoning,
            p("/output_tokens_details/reasoning_tokens"),
        );
        set(&mut self.cache_read, n("cache_read_input_tokens"));
        set(&mut self.cache_write, n("cache_creation_input_tokens"));
        // camelCase (Bedrock Converse and gateways that copy it)
        set(&mut self.input_uncached, n("inputTokens"));
        set(&mut self.output, n("outputTokens"));
        set(&mut self.cache_read, n("cacheReadInputTokens"));
        set(&mut self.cache_write, n("cacheWriteInputTokens"));
    }

    /// Gemini's `usageMetadata`: the prompt count includes cached content; thinking tokens are
    /// billed as output.
    fn gemini(&mut self, u: &Value) {
        let n = |k: &str| count(u.get(k));
        set(&mut self.input_total, n("promptTokenCount"));
        set(&mut self.cache_read, n("cachedContentTokenCount"));
        let thoughts = n("thoughtsTokenCount");
        set(&mut self.reasoning, thoughts);
        if let Some(c) = n("candidatesTokenCount") {
            self.output = Some(c.saturating_add(thoughts.unwrap_or(0)));
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The usage, or `None` when no document reported any input or output count (an unknown
    /// shape is *missing*, never zero).
    pub fn usage(&self) -> Option<Usage> {
        let cache_read = self.cache_read.unwrap_or(0);
        let cache_write = self.cache_write.unwrap_or(0);
        let input = self.input_total.or_else(|| {
            self.input_uncached
                .map(|i| i.saturating_add(cache_read).saturating_add(cache_write))
        });
        if input.is_none() && self.output.is_none() {
            return None;
        }
        Some(Usage {
            input: input.unwrap_or(0),
            output: self.output.unwrap_or(0),
            cache_read,
            cache_write,
            reasoning: self.reasoning.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(docs: &[Value]) -> (Option<String>, Option<Usage>) {
        let mut a = Accum::default();
        for d in docs {
            a.document(d);
        }
        (a.model().map(str::to_string), a.usage())
    }

    fn u(input: u64, output: u64, cache_read: u64, cache_write: u64, reasoning: u64) -> Usage {
        Usage {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        }
    }

    #[test]
    fn openai_chat_json() {
        let (m, us) = read(&[json!({
            "id": "x", "model": "gpt-4o-2024-08-06",
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1000},
                "completion_tokens_details": {"reasoning_tokens": 64}}
        })]);
        assert_eq!(m.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(us, Some(u(1200, 300, 1000, 0, 64)));
    }

    #[test]
    fn openai_stream_takes_the_final_chunk() {
        let (m, us) = read(&[
            json!({"model": "gpt-4o", "choices": [{"delta": {"content": "hi"}}], "usage": null}),
            json!({"model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}),
        ]);
        assert_eq!(m.as_deref(), Some("gpt-4o"));
        assert_eq!(us, Some(u(10, 5, 0, 0, 0)));
    }

    #[test]
    fn responses_api_completed_event() {
        let (m, us) = read(&[
            json!({"type": "response.created", "response": {"model": "o3", "usage": null}}),
            json!({"type": "response.completed", "response": {"model": "o3-2025",
                "usage": {"input_tokens": 500, "input_tokens_details": {"cached_tokens": 100},
                          "output_tokens": 80, "output_tokens_details": {"reasoning_tokens": 40}}}}),
        ]);
        assert_eq!(m.as_deref(), Some("o3-2025"));
        assert_eq!(us, Some(u(500, 80, 100, 0, 40)));
    }

    #[test]
    fn anthropic_stream_output_is_cumulative_latest_wins() {
        let (m, us) = read(&[
            json!({"type": "message_start", "message": {"model": "claude-sonnet-4-5",
                "usage": {"input_tokens": 20, "cache_creation_input_tokens": 300,
                          "cache_read_input_tokens": 1000, "output_tokens": 1}}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 15}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 42}}),
        ]);
        assert_eq!(m.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(us, Some(u(1320, 42, 1000, 300, 0)));
    }

    #[test]
    fn anthropic_json_and_camel_case() {
        let (_, a) = read(&[json!({"type": "message", "model": "claude",
            "usage": {"input_tokens": 20, "cache_creation_input_tokens": 300,
                      "cache_read_input_tokens": 1000, "output_tokens": 42}})]);
        assert_eq!(a, Some(u(1320, 42, 1000, 300, 0)));
        let (_, b) = read(&[json!({"usage": {"inputTokens": 7, "outputTokens": 3,
            "cacheReadInputTokens": 2, "totalTokens": 12}})]);
        assert_eq!(b, Some(u(9, 3, 2, 0, 0)));
        let (_, c) = read(&[json!({"metadata": {"usage": {"inputTokens": 7, "outputTokens": 3}}})]);
        assert_eq!(c, Some(u(7, 3, 0, 0, 0)));
    }

    #[test]
    fn unknown_shapes_and_malformed_counts_are_missing_not_zero() {
        for doc in [
            json!({"choices": []}),
            json!({"usage": null}),
            json!({"usage": {"tokens": 5}}),
            json!({"usage": {"prompt_tokens": "12", "completion_tokens": -1}}),
            json!({"usage": {"prompt_tokens": 1.5}}),
            json!([1, 2, 3]),
            json!("usage"),
        ] {
            assert_eq!(read(std::slice::from_ref(&doc)).1, None, "{doc}");
        }
    }

    #[test]
    fn an_overlong_model_is_ignored() {
        let (m, _) = read(&[json!({"model": "x".repeat(300)})]);
        assert_eq!(m, None);
    }
}
