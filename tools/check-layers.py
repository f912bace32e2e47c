#!/usr/bin/env python3
"""check-layers.py - the library's import graph runs one way (docs/architecture.md).

Reads every `use crate::...` and `crate::x::...` path in src/ (not src/bin/, not comments, not a
file's trailing `#[cfg(test)] mod tests`) and fails if a file names a module at its own layer or
above, or if a module is missing from LAYERS. A submodule file (src/protocol/lean.rs) belongs to
its parent (protocol).

    tools/check-layers.py [SRC]     check SRC (default: src/ next to this script's parent)
    tools/check-layers.py --graph   print each module's imports, bottom layer first
    tools/check-layers.py --self-test
                                    prove the check fails on a back import, a cycle and an
                                    unlisted module, and passes on a clean tree
"""

import re
import sys
import tempfile
from pathlib import Path

# Bottom first. A module may name only modules listed before it. Why this order, and what each
# layer holds: docs/architecture.md.
LAYERS = [
    # the vocabulary every layer shares; imports nothing from the crate
    "model", "target", "plan", "module_file", "wire",
    # the kernel: syscalls and sysfs
    "kernel",
    # what a name means: libkmod, and modprobe.d's install lines
    "kmod", "install_config", "resolver",
    # running install commands outside the daemon's sandbox
    "install_runner",
    # the boot's record (format, then the live recorder and its writer)
    "record", "recorder",
    # merging loads: knows nothing of sockets or the wire format
    "broker",
    # udev's skip markers
    "config_watch", "skip",
    # the wire format's types and codec
    "protocol",
    # one request's handling
    "service",
    # the socket
    "server",
    # loading without a daemon
    "direct",
    # configuration, the client, reports and the command lines
    "config", "client", "report", "blame", "plot", "cli", "client_cli", "daemon",
    # test support, above everything it fakes
    "testing",
]

USE_GROUP = re.compile(r"\buse\s+crate::\{")
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)\b")
TEST_MODULE = re.compile(r"^#\[cfg\(test\)\]\s*\n\s*(pub\s+)?mod\s+\w+\s*\{", re.M)


def code_of(text):
    """The file without comments and without its trailing test module."""
    match = TEST_MODULE.search(text)
    if match:
        text = text[: match.start()]
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("//"):
            continue
        lines.append(line)
    return "\n".join(lines)


def group_heads(code, start):
    """Module names at the top level of the `use crate::{...}` group opening at `start`."""
    depth, word, heads = 0, "", set()
    for i in range(start, len(code)):
        ch = code[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if ch.isalnum() or ch == "_":
            word += ch
            continue
        if depth == 1 and word and code.startswith("::", i) and word not in ("self", "super"):
            heads.add(word)
        if ch != ":":
            word = ""
        elif not code.startswith("::", i - 1) and not code.startswith("::", i):
            word = ""
    return heads


def imports_of(code):
    names = set(CRATE_PATH.findall(code))
    for match in USE_GROUP.finditer(code):
        names |= group_heads(code, match.end() - 1)
    return names


def module_of(src, path):
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def graph(src):
    edges = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src)
        if rel.parts[0] == "bin" or rel.name in ("lib.rs", "main.rs"):
            continue
        module = module_of(src, path)
        found = imports_of(code_of(path.read_text()))
        edges.setdefault(module, set()).update(found - {module})
    return edges


def problems(src):
    edges = graph(src)
    out = []
    for module in sorted(edges):
        if module not in LAYERS:
            out.append(f"{module}: not in LAYERS (tools/check-layers.py): place it in a layer")
            continue
        level = LAYERS.index(module)
        for name in sorted(edges[module]):
            if name not in LAYERS:
                out.append(f"{module}: imports crate::{name}, which is not in LAYERS")
            elif LAYERS.index(name) >= level:
                out.append(
                    f"{module} (layer {level}) imports crate::{name} (layer "
                    f"{LAYERS.index(name)}): an import must point down (docs/architecture.md)"
                )
    return out


def print_graph(src):
    edges = graph(src)
    for module in sorted(edges, key=lambda m: LAYERS.index(m) if m in LAYERS else len(LAYERS)):
        print(f"{module}: {' '.join(sorted(edges[module], key=LAYERS.index)) or '-'}")


def self_test():
    cases = {
        "clean": ({"model.rs": "pub struct A;",
                   "kernel.rs": "use crate::model::A;\n#[cfg(test)]\nmod tests {\n use crate::broker::B;\n}",
                   "broker.rs": "use crate::{\n    kernel::X,\n    model::{A, B},\n};\n// crate::server in a comment\npub struct B;"},
                  0),
        "back import": ({"model.rs": "", "kernel.rs": "fn f() { crate::broker::g() }", "broker.rs": ""}, 1),
        "group back import": ({"model.rs": "", "broker.rs": "", "kernel.rs": "use crate::{\n    model::A,\n    broker::{self, B},\n};"}, 1),
        "cycle": ({"kernel.rs": "use crate::record::A;", "record.rs": "use crate::kernel::K;"}, 1),
        "same layer": ({"kernel.rs": "use crate::kernel::K;\nuse super::x;"}, 0),
        "unlisted": ({"newthing.rs": "use crate::model::A;", "model.rs": ""}, 1),
        "submodule": ({"protocol.rs": "mod lean;", "protocol/lean.rs": "use crate::service::S;", "service.rs": ""}, 1),
    }
    failed = 0
    for name, (files, expected) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp)
            for rel, text in files.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_text(text)
            got = len(problems(src))
        if got != expected:
            print(f"check-layers self-test: {name}: {got} problems, expected {expected}")
            failed = 1
    if not failed:
        print(f"check-layers self-test: {len(cases)} cases pass")
    return failed


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    default = Path(__file__).resolve().parent.parent / "src"
    if argv[1:2] == ["--graph"]:
        print_graph(Path(argv[2]) if len(argv) > 2 else default)
        return 0
    src = Path(argv[1]) if len(argv) > 1 else default
    found = problems(src)
    for line in found:
        print(f"check-layers: {line}")
    if found:
        return 1
    print(f"check-layers: {len(graph(src))} modules, every import points down")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
