#!/usr/bin/env python3
"""Keeps the module layers a crate's lib.rs claims true.

For each crate given (its src/ folder):

- no two modules of one parent import each other, directly or around a circle (a module
  may use its parent's items and the parent its children: those edges do not count);
- where lib.rs lists its modules in numbered layers (`// 1. ...` comments, each followed by
  the `mod` lines of that layer; an unnumbered comment starts a layer of its own), a module
  imports only from its own layer or the ones above it in the list, and the modules of one
  layer form no circle.

A reference is any `crate::a::b` or `super::x` path in code (comments and strings are not
read) or in a grouped `use crate::{a::x, b}`. Prints each breach and exits 1; exits 0 with
one line per crate when all hold.

    python3 scripts/lib/layers.py a4co-events a4co-saga a4co-http a4co-testkit
"""

import os
import re
import sys


def strip(code):
    """Code without comments, strings and char literals (approximately, enough here)."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
        elif code.startswith("/*", i):
            j = code.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', code[i:]) and (i == 0 or not code[i - 1].isalnum()):
            hashes = re.match(r"r(#*)\"", code[i:]).group(1)
            end = code.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and code[j] != '"':
                j += 2 if code[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", code[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", code[i:]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_files(src):
    """Module path (tuple) -> file, for every .rs under src (bin/ left out)."""
    files = {}
    for root, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if d != "bin"]
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, name), src)[:-3].split(os.sep)
            if rel == ["lib"]:
                path = ()
            elif rel[-1] == "mod":
                path = tuple(rel[:-1])
            else:
                path = tuple(rel)
            files[path] = os.path.join(root, name)
    return files


def references(path, code, modules):
    """The modules (paths) a module's code refers to."""
    refs = set()

    def resolve(segments):
        # The longest known module the segments name.
        best = None
        for k in range(1, len(segments) + 1):
            if tuple(segments[:k]) in modules:
                best = tuple(segments[:k])
        return best

    def base_of(head):
        if head == "crate":
            return []
        up = head.count("super")
        return list(path[: len(path) - up]) if up <= len(path) else None

    for m in re.finditer(r"\b((?:crate|super)(?:::super)*)((?:::\w+)*)(::\{)?", code):
        base = base_of(m.group(1))
        if base is None:
            continue
        tail = [s for s in m.group(2).split("::") if s]
        if m.group(3):
            # A group: each member's first segment, at depth one.
            start = m.end()
            depth, token, members = 1, "", []
            for ch in code[start:]:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        members.append(token)
                        break
                elif ch == "," and depth == 1:
                    members.append(token)
                    token = ""
                    continue
                if depth >= 1 and ch not in "{}":
                    token += ch if depth == 1 else ""
            for member in members:
                first = member.strip().split("::")[0].split(" ")[0]
                if first and first != "self":
                    target = resolve(base + tail + [first])
                    if target is not None:
                        refs.add(target)
            target = resolve(base + tail)
        else:
            target = resolve(base + tail)
        if target is not None:
            refs.add(target)
    refs.discard(path)
    return refs


def circles(nodes, edges):
    """The strongly connected groups of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def layers_of(lib):
    """Top module -> layer number, from lib.rs's layer comments (empty if it has none)."""
    layer, numbered, result = -1, False, {}
    started = False
    for line in lib.splitlines():
        s = line.strip()
        if s.startswith("// ") and (re.match(r"// \d+\.", s) or started):
            if re.match(r"// \d+\.", s):
                numbered = started = True
            layer += 1
            continue
        m = re.match(r"(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", s)
        if m and started:
            result[m.group(1)] = layer
    return result if numbered else {}


def name(path):
    return "::".join(path) or "crate"


def check(crate):
    src = os.path.join(crate, "src")
    files = module_files(src)
    modules = set(files)
    edges = {}
    for path, file in files.items():
        with open(file, encoding="utf-8") as f:
            code = strip(f.read())
        refs = references(path, code, modules)
        # Up to the module of the same parent it lies in (a sibling, or a sibling's child).
        edges[path] = refs
    problems = []
    # Sibling circles, at every level.
    parents = {p[:-1] for p in modules if p}
    for parent in sorted(parents):
        children = {p for p in modules if len(p) == len(parent) + 1 and p[: len(parent)] == parent}
        lifted = {}
        for p, refs in edges.items():
            if len(p) <= len(parent) or p[: len(parent)] != parent:
                continue
            src_child = p[: len(parent) + 1]
            for r in refs:
                if len(r) > len(parent) and r[: len(parent)] == parent:
                    dst = r[: len(parent) + 1]
                    if dst != src_child:
                        lifted.setdefault(src_child, set()).add(dst)
        for group in circles(children, lifted):
            problems.append(
                f"{crate}: modules of {name(parent)} import each other: "
                + " <-> ".join(name(g) for g in group)
            )
    # Layer order from lib.rs.
    with open(files[()], encoding="utf-8") as f:
        layers = layers_of(f.read())
    for p, refs in edges.items():
        if not p or p[0] not in layers:
            continue
        for r in refs:
            if r and r[0] in layers and layers[r[0]] > layers[p[0]]:
                problems.append(
                    f"{crate}: {name(p)} (layer {layers[p[0]] + 1} in lib.rs) imports "
                    f"{name(r)}, of layer {layers[r[0]] + 1}, above its own"
                )
    return problems, len(modules), bool(layers)


def main(crates):
    failed = False
    for crate in crates:
        problems, count, layered = check(crate)
        for problem in sorted(set(problems)):
            print(problem)
        failed |= bool(problems)
        if not problems:
            what = "layers as lib.rs lists them, no circles" if layered else "no circles"
            print(f"{crate}: {count} modules, {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
