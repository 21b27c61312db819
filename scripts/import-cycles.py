#!/usr/bin/env python3
"""Import cycles between the crate's files.

For each file under src/ (one module per file), the set of crate modules it refers to — in
`use` statements (braces expanded; `crate::`, `super::`, `self::` and child-module paths) and
in paths written inline (`crate::budget::StoreError`) — resolved to the file of the longest
module prefix. Unit-test modules (`#[cfg(test)] mod …` to the end of the file) are left out.
Prints every cycle (strongly connected component of more than one file) and exits 1 if any.

    scripts/import-cycles.py [src-dir]      # -v: print each file's imports too
"""

import os
import re
import sys


def modules(src):
    """module path (tuple) -> file, for lib.rs and everything under it."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                mods[()] = path if rel == ["lib"] else mods.get((), path)
                continue
            if rel[-1] == "mod":
                rel = rel[:-1]
            mods[tuple(rel)] = path
    return mods


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    cut = re.search(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text)
    return text[: cut.start()] if cut else text


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]"""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.groups()
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    return [prefix + q for p in parts if p for q in expand(p)]


def resolve(path, here, mods):
    """the module (tuple) a path refers to, or None when it is not the crate's"""
    segs = [s for s in re.split(r"::", path.split(" as ")[0]) if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] == "super":
        base = here
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    elif segs[0] == "self":
        base, segs = here, segs[1:]
    elif here + (segs[0],) in mods:
        base = here  # a child module named without `self::`
    else:
        return None
    best = base
    for i in range(len(segs)):
        if base + tuple(segs[: i + 1]) in mods:
            best = base + tuple(segs[: i + 1])
        else:
            break
    return best


def imports(path, here, mods):
    text = strip(open(path).read())
    found = set()
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for p in expand(m.group(1)):
            r = resolve(p, here, mods)
            if r is not None:
                found.add(r)
    for m in re.finditer(r"\b(?:crate|super)(?:::\w+)+", text):
        r = resolve(m.group(0), here, mods)
        if r is not None:
            found.add(r)
    found.discard(here)
    return found


def cycles(graph):
    """Tarjan's strongly connected components with more than one node"""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    src = args[0] if args else "src"
    mods = modules(src)
    name = lambda m: os.path.relpath(mods[m], src)
    graph = {m: imports(p, m, mods) for m, p in mods.items() if m != ()}
    if "-v" in sys.argv:
        for m in sorted(graph, key=name):
            print(f"{name(m)}: {', '.join(sorted(name(d) for d in graph[m] if d != ()))}")
    found = cycles(graph)
    for comp in found:
        members = set(comp)
        print("cycle: " + ", ".join(name(m) for m in comp))
        for m in comp:
            for d in sorted(graph[m] & members, key=name):
                print(f"  {name(m)} -> {name(d)}")
    if not found:
        print(f"no import cycles among {len(graph)} files")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
