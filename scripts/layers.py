#!/usr/bin/env python3
"""The crate's one-way rule, checked: each layer imports only the layers below it, and no two
modules (at any depth) import each other in a cycle. Exits 1 with the offending imports.

Usage: python3 scripts/layers.py [src]   (CI runs it; see ARCHITECTURE.md)

It reads `crate::` paths (and `use crate::{..}` groups) in each file, outside comments and unit
test modules (tests may reach anything). cargo-modules would do the same from the compiler's view
but takes minutes to build; the import paths are where a dependency is written anyway.
"""
import os
import re
import sys

# Which layers each layer may import. Product layers first, then the rooms beside the product.
ALLOWED = {
    "model": set(),
    "net": set(),
    "config": {"model"},
    "wire": {"model"},
    "decide": {"model"},
    "observe": {"model"},
    "health": {"model", "decide", "wire", "net"},
    "serve": {"model", "config", "decide", "wire", "health", "observe", "net"},
    "cmd": {"model", "config", "decide", "wire", "health", "observe", "net", "serve", "testkit"},
    "testkit": {"model", "config", "decide", "wire", "health", "observe", "net", "serve"},
    "inject": set(),
}


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    # Unit tests may import anything (a mock, a config parser).
    return re.split(r"#\[cfg\(test\)\]\s*mod \w+", text)[0]


def imports(text):
    """Module paths named after `crate::`, as tuples of path segments (lowercase ones only)."""
    found = set()
    for m in re.finditer(r"crate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text):
        found.add(tuple(m.group(1).split("::")))
    for block in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
        for item in re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", block):
            found.add(tuple(item.split("::")))
    return found


def module_of(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    files = {}
    for root, _, names in os.walk(src):
        for f in names:
            if f.endswith(".rs"):
                rel = os.path.relpath(os.path.join(root, f), src)
                if rel in ("main.rs", "lib.rs"):
                    continue
                files[module_of(rel)] = strip(open(os.path.join(root, f), encoding="utf-8").read())
    modules = set(files)
    problems = []
    edges = {m: set() for m in modules}
    for mod, text in files.items():
        layer = mod[0]
        if layer not in ALLOWED:
            problems.append(f"src/{'/'.join(mod)}: top-level module {layer!r} is in no layer")
            continue
        for path in imports(text):
            # The longest prefix of the path that names a module of the crate.
            target = None
            for k in range(len(path), 0, -1):
                if path[:k] in modules:
                    target = path[:k]
                    break
            if target is None or target == mod:
                continue
            if target[0] != layer and target[0] not in ALLOWED[layer]:
                problems.append(
                    f"{'::'.join(mod)} imports {'::'.join(target)}: {layer}/ may import only "
                    f"{', '.join(sorted(ALLOWED[layer])) or 'nothing of the crate'}"
                )
            # A module importing its own parent's items (`super`-like) is not a cycle edge.
            if target != mod[: len(target)]:
                edges[mod].add(target)
    # Cycles between modules at any depth (Tarjan's strongly connected components).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for c in sccs:
        problems.append("import cycle: " + " <-> ".join("::".join(m) for m in c))
    layers = sorted({m[0] for m in modules})
    if problems:
        print("\n".join(problems))
        print(f"layers: {len(problems)} problem(s) in {len(modules)} modules")
        return 1
    print(f"layers: {len(modules)} modules in {len(layers)} layers, one-way, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
