//! An incremental Server-Sent Events scanner: fed the response body read by read, it hands out
//! each complete event (its `event:` name and its `data:` lines joined by `\n`) without ever
//! holding more than one event. Works on bytes, so a UTF-8 character split across reads is
//! simply joined again before anyone decodes it; `\r\n`, `\n` and `\r` all end a line, a `\r\n`
//! split across reads included. An event whose data outgrows the cap is skipped whole (its
//! bytes are dropped as they arrive), so a hostile or runaway stream costs at most `cap` bytes.

/// The data of one event the scanner holds at most (an AI usage event is a few hundred bytes;
/// a whole completion in one event is rare but legitimate up to this size).
pub const MAX_EVENT: usize = 1 << 20;

/// Field names longer than this are no field we read (`data`, `event`): the line is ignored.
const MAX_FIELD: usize = 16;
/// An `event:` name longer than this is cut (names are short identifiers).
const MAX_NAME: usize = 128;

/// One dispatched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// the `event:` field (empty when the event had none)
    pub name: &'a [u8],
    /// the `data:` lines, joined by `\n`
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// reading the field name (up to `:` or the line end)
    Name,
    /// reading the value of a field; `fresh` until its first byte (one leading space is
    /// dropped, as the SSE spec says)
    Value { field: Field, fresh: bool },
}

#[derive(Debug)]
pub struct Scanner {
    cap: usize,
    line: Line,
    field: Vec<u8>,
    name: Vec<u8>,
    data: Vec<u8>,
    /// the event has a `data` field (possibly empty)
    has_data: bool,
    /// the event's data outgrew `cap`: it is skipped
    over: bool,
    /// the last byte seen was `\r`: a `\n` right after it ends the same line
    after_cr: bool,
    skipped: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new(MAX_EVENT)
    }
}

impl Scanner {
    pub fn new(cap: usize) -> Self {
        Scanner {
            cap,
            line: Line::Name,
            field: Vec::new(),
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            over: false,
            after_cr: false,
            skipped: 0,
        }
    }

    /// Events skipped because their data outgrew the cap.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Scans the next read of the stream, calling `on_event` for each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                i += 1;
                continue;
            }
            if b == b'\r' || b == b'\n' {
                self.after_cr = b == b'\r';
                self.end_line(&mut on_event);
                i += 1;
                continue;
            }
            match self.line {
                Line::Name => {
                    if b == b':' {
                        let field = match self.field.as_slice() {
                            b"data" => Field::Data,
                            b"event" => Field::Event,
                            _ => Field::Other,
                        };
                        self.start_value(field);
                    } else if self.field.len() < MAX_FIELD {
                        self.field.push(b);
                    } else {
                        // no field we read has a name this long
                        self.line = Line::Value {
                            field: Field::Other,
                            fresh: false,
                        };
                    }
                    i += 1;
                }
                Line::Value { field, fresh } => {
                    let rest = &chunk[i..];
                    let end = rest
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(rest.len());
                    let mut v = &rest[..end];
                    if fresh {
                        if let Some(tail) = v.strip_prefix(b" ") {
                            v = tail;
                        }
                        self.line = Line::Value {
                            field,
                            fresh: false,
                        };
                    }
                    self.append(field, v);
                    i += end;
                }
            }
        }
    }

    /// The stream ended: an event still open (no blank line after it) is dispatched, so a
    /// stream cut right after its usage event still counts it (a half-written JSON document
    /// simply fails to parse later).
    pub fn finish(&mut self, mut on_event: impl FnMut(Event<'_>)) {
        self.end_line(&mut on_event);
        self.dispatch(&mut on_event);
    }

    fn start_value(&mut self, field: Field) {
        self.field.clear();
        if field == Field::Data {
            // lines of one event's data are joined by '\n'
            if self.has_data {
                self.append(Field::Data, b"\n");
            }
            self.has_data = true;
        }
        self.line = Line::Value { field, fresh: true };
    }

    fn append(&mut self, field: Field, v: &[u8]) {
        match field {
            Field::Data if !self.over => {
                if self.data.len() + v.len() > self.cap {
                    self.over = true;
                    self.skipped += 1;
                    // give the memory back now, not at the end of the oversized event
                    self.data = Vec::new();
                } else {
                    self.data.extend_from_slice(v);
                }
            }
            Field::Event => {
                let room = MAX_NAME.saturating_sub(self.name.len());
                self.name.extend_from_slice(&v[..v.len().min(room)]);
            }
            _ => {}
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Event<'_>)) {
        match self.line {
            Line::Name if self.field.is_empty() => self.dispatch(on_event),
            Line::Name => {
                // a line without a colon names a field with an empty value
                let field = match self.field.as_slice() {
                    b"data" => Field::Data,
                    b"event" => Field::Event,
                    _ => Field::Other,
                };
                self.start_value(field);
            }
            Line::Value { .. } => {}
        }
        self.field.clear();
        self.line = Line::Name;
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Event<'_>)) {
        if self.has_data && !self.over {
            on_event(Event {
                name: &self.name,
                data: &self.data,
            });
        }
        self.data.clear();
        self.name.clear();
        self.has_data = false;
        self.over = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_chunks(chunks: &[&[u8]], cap: usize) -> Vec<(String, Vec<u8>)> {
        let mut s = Scanner::new(cap);
        let mut out = Vec::new();
        let mut push = |e: Event<'_>| {
            out.push((
                String::from_utf8_lossy(e.name).into_owned(),
                e.data.to_vec(),
            ))
        };
        for c in chunks {
            s.feed(c, &mut push);
        }
        s.finish(&mut push);
        out
    }

    fn scan(all: &[u8]) -> Vec<(String, Vec<u8>)> {
        scan_chunks(&[all], MAX_EVENT)
    }

    #[test]
    fn events_fields_and_line_ends() {
        let got =
            scan(b"event: a\ndata: 1\n\n: comment\r\ndata:2\r\ndata: 3\r\n\r\nevent:x\rdata\r\r");
        assert_eq!(
            got,
            vec![
                ("a".into(), b"1".to_vec()),
                ("".into(), b"2\n3".to_vec()),
                ("x".into(), b"".to_vec()),
            ]
        );
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert!(scan(b"event: ping\n\n: keepalive\n\nretry: 10\n\n").is_empty());
    }

    #[test]
    fn only_one_leading_space_is_dropped() {
        assert_eq!(scan(b"data:  two\n\n")[0].1, b" two".to_vec());
        // the space arriving in a later read than the colon
        assert_eq!(
            scan_chunks(&[b"data:", b" x\n", b"\n"], MAX_EVENT)[0].1,
            b"x".to_vec()
        );
    }

    #[test]
    fn crlf_split_across_reads_is_one_line_end() {
        let got = scan_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], MAX_EVENT);
        assert_eq!(got, vec![("".into(), b"a\nb".to_vec())]);
    }

    #[test]
    fn utf8_split_across_reads_is_joined() {
        let all = "data: {\"t\":\"é😀\"}\n\n".as_bytes();
        for cut in 0..all.len() {
            let got = scan_chunks(&[&all[..cut], &all[cut..]], MAX_EVENT);
            assert_eq!(got[0].1, "{\"t\":\"é😀\"}".as_bytes(), "cut at {cut}");
        }
    }

    #[test]
    fn an_event_over_the_cap_is_skipped_and_memory_stays_bounded() {
        let mut s = Scanner::new(16);
        let mut seen = Vec::new();
        s.feed(b"data: 0123456789\ndata: 0123456789\n", |e| {
            seen.push(e.data.to_vec())
        });
        assert!(s.data.capacity() <= 16, "the oversized event was dropped");
        s.feed(b"\ndata: ok\n\n", |e| seen.push(e.data.to_vec()));
        assert_eq!(seen, vec![b"ok".to_vec()]);
        assert_eq!(s.skipped(), 1);
    }

    #[test]
    fn a_long_field_name_is_ignored() {
        let got = scan(b"dataaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: x\ndata: y\n\n");
        assert_eq!(got, vec![("".into(), b"y".to_vec())]);
    }

    #[test]
    fn an_unterminated_last_event_is_dispatched_at_the_end() {
        assert_eq!(scan(b"data: last"), vec![("".into(), b"last".to_vec())]);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            cuts in prop::collection::vec(0usize..200, 0..12),
            crlf in any::<bool>(),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let all = format!(
                "event: message_start{nl}data: {{\"a\":\"é\"}}{nl}{nl}: ping{nl}data: 1{nl}data: 2{nl}{nl}data: ☃☃☃{nl}{nl}"
            );
            let all = all.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (all.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&all[at..c]);
                at = c;
            }
            chunks.push(&all[at..]);
            prop_assert_eq!(scan_chunks(&chunks, MAX_EVENT), scan(all));
        }
    }
}
