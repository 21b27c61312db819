//! A small Prometheus text-format parser.

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (comments and blank lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// One sample line (None for comments, blank lines and what does not parse).
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => return None,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    other => value.push(other),
                }
            }
            rest = &rest[end? + 1..];
            labels.push((key, value));
        }
    }
    let value_str = rest.split_whitespace().next()?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Sum of every series named `name` whose labels include all of `labels` (0.0 when none).
/// With all labels given this is the value of that one series.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// True when some series named `name` exists (any labels).
pub fn has_series(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    parse(text).iter().any(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    })
}

#[test]
fn parser_reads_labels_and_escapes() {
    let text = "# HELP x y\n# TYPE cc_a counter\ncc_a{reason=\"expired\",route=\"a\\\"b\"} 3\ncc_a{reason=\"other\"} 2\ncc_b 1.5\ncc_h_bucket{le=\"+Inf\"} 7\n";
    assert_eq!(metric(text, "cc_a", &[("reason", "expired")]), 3.0);
    assert_eq!(metric(text, "cc_a", &[("route", "a\"b")]), 3.0);
    assert_eq!(metric(text, "cc_a", &[]), 5.0);
    assert_eq!(metric(text, "cc_b", &[]), 1.5);
    assert_eq!(metric(text, "cc_h_bucket", &[("le", "+Inf")]), 7.0);
    assert_eq!(metric(text, "cc_missing", &[]), 0.0);
    assert!(has_series(text, "cc_b", &[]));
}
