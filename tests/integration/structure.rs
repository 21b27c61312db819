//! The house rules that keep the code easy to change, checked on the source itself: no
//! import cycle between files of `src/`, and no file there over the size a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Beyond this a file holds more than one concern (docs/architecture.md: one room per concern).
const MAX_LINES: usize = 650;

/// `src/**/*.rs` as module paths (`auth::verify`, `config` for `config/mod.rs`) → source.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path: PathBuf = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            // binaries (main.rs, bin/) are the crate's users, not part of its module graph
            if rel == Path::new("main.rs") || rel.starts_with("bin") {
                continue;
            }
            let src = std::fs::read_to_string(&path).expect("read source");
            out.insert(parts.join("::"), src);
        }
    }
    out
}

/// Code only: comments and string literals could mention `crate::x` without depending on it.
fn strip_comments_and_strings(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The code before an inline `#[cfg(test)] mod …` (by convention the file's end): a unit-test
/// module's `super::` is the file itself, and what tests import is not the design's graph.
fn without_test_module(code: &str) -> String {
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]") {
        let start = from + at;
        let rest = code[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") || rest.starts_with("pub mod ") {
            return code[..start].to_string();
        }
        from = start + 1;
    }
    code.to_string()
}

/// The files a module imports: every `crate::a::b…` path (in `use` lists too) resolved to the
/// longest module it names. A module naming its own children (`pub mod x; pub use x::Y`) is
/// how Rust lays out a folder, not a dependency, so parent → child edges are left out.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, src) in mods {
        let code = without_test_module(&strip_comments_and_strings(src));
        let mut deps = BTreeSet::new();
        for path in crate_paths(&code, name) {
            let segs: Vec<&str> = path.split("::").collect();
            let target = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| mods.contains_key(m));
            if let Some(t) = target {
                let is_child = !name.is_empty() && t.starts_with(&format!("{name}::"));
                if t != *name && !is_child && !name.is_empty() {
                    deps.insert(t);
                }
            }
        }
        graph.insert(name.clone(), deps);
    }
    graph
}

/// `crate::…` and `super::…` paths, with `use` groups (`crate::a::{b, c::d}`) expanded.
fn crate_paths(code: &str, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parent: Vec<&str> = module.split("::").collect();
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if start > 0 {
            let prev = code.as_bytes()[start - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':' {
                continue;
            }
        }
        let (prefix, rest) = if code[start..].starts_with("crate::") {
            (String::new(), &code[start + 7..])
        } else {
            // super:: from a/b/c.rs (module a::b::c) is a::b
            let base = parent[..parent.len().saturating_sub(1)].join("::");
            (base, &code[start + 7..])
        };
        expand(&prefix, rest, &mut out);
    }
    out
}

fn expand(prefix: &str, rest: &str, out: &mut Vec<String>) {
    if let Some(body) = rest.strip_prefix('{') {
        return group(prefix, body, out);
    }
    let mut path = prefix.to_string();
    let mut chars = rest.char_indices().peekable();
    let mut seg = String::new();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            seg.push(c);
        } else if c == ':' && rest[i..].starts_with("::") {
            chars.next();
            if !path.is_empty() {
                path.push_str("::");
            }
            path.push_str(&seg);
            seg.clear();
            if let Some(body) = rest[i + 2..].strip_prefix('{') {
                return group(&path, body, out);
            }
        } else {
            break;
        }
    }
    if !seg.is_empty() {
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(&seg);
    }
    out.push(path);
}

/// A `use` group after `{`: each comma-separated member at depth 1 is its own path.
fn group(prefix: &str, body: &str, out: &mut Vec<String>) {
    let mut depth = 1;
    let mut member_start = 0;
    for (j, ch) in body.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                expand(prefix, body[member_start..j].trim(), out);
                member_start = j + 1;
                if ch == '}' {
                    return;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_between_files_of_src() {
    let mods = modules();
    assert!(mods.contains_key("pipeline"), "module scan found the crate");
    let found = cycles(&edges(&mods));
    assert!(
        found.is_empty(),
        "import cycles between files of src/ (each group imports itself through the others): {found:?}"
    );
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    // the check itself, on a made-up crate: a ↔ b through a `use` group, c → a only, and a
    // folder d whose mod.rs re-exports its child e (not a cycle)
    let mods: BTreeMap<String, String> = [
        (
            "a",
            "use crate::{b::Thing, d::e::{Y, W}};\n// crate::c in a comment\n",
        ),
        ("b", "fn f() -> crate::a::X { todo!() }"),
        (
            "c",
            "use super::a; const S: &str = \"crate::b\";\n#[cfg(test)]\nmod tests { use crate::b; }",
        ),
        ("d", "pub mod e; pub use e::Y;"),
        ("d::e", "use crate::d::Z;"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let g = edges(&mods);
    assert_eq!(g["c"], BTreeSet::from(["a".to_string()]));
    assert_eq!(
        g["a"],
        BTreeSet::from(["b".to_string(), "d::e".to_string()])
    );
    assert_eq!(g["d::e"], BTreeSet::from(["d".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn no_file_in_src_over_the_size_limit() {
    let big: Vec<(String, usize)> = modules()
        .into_iter()
        .map(|(m, src)| (m, src.lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .collect();
    assert!(
        big.is_empty(),
        "files over {MAX_LINES} lines (split by concern): {big:?}"
    );
}
