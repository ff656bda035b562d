"""The package layout is the data flow: every import points down the stage order.

Each module's imports are read with ast (lazy imports inside functions too) and
resolved to harness modules. An import of a later stage, an import cycle, or a
module outside the stage list fails here, so the layering stays what the README's
layout section says it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

from harness.paths import REPO_ROOT

HARNESS = REPO_ROOT / "harness"

# Top-level modules and packages of harness/, in data-flow order: each may import
# only from itself and the ones before it. Keep in step with the README's layout.
STAGES = [
    "errors", "files", "paths", "confine", "arch",  # base
    "cases",                              # case files, blob store, remote, lifecycle
    "core",                               # core file -> process model
    "unwind_data",                        # stack deltas from CFI
    "interpreters",                       # per-runtime introspection (CPython)
    "helpers",                            # the kernel side, emulated: maps and helpers
    "bpf",                                # the unwinder as a program
    "diffing", "formatting", "replay",    # trace -> frames -> comparison (diffs for people)
    "check",                              # rules against the CPU (unicorn, capstone)
    "record",                             # coredump new / verify / record-qemu
    "live",                               # coredump live: the kernel against replay
    "debug",                              # coredump debug / gdb
    "bench",                              # coredump bench: us against gdb, eu-stack
    "cli",                                # argparse and printing only
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The harness module an import names (a submodule if it is one, else its package)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The harness modules a module imports, anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("harness"):
                resolved = _resolve(target, known)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    return found


def stage(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_is_in_a_stage() -> None:
    unknown = {m for m in modules() if m != "harness" and stage(m) not in STAGES}
    assert not unknown, f"add these to STAGES (and the README's layout): {sorted(unknown)}"


def test_imports_point_down_the_stage_order() -> None:
    rank = {name: i for i, name in enumerate(STAGES)}
    upward = [f"{m} imports {t}" for m, targets in graph().items() if m != "harness"
              for t in sorted(targets) if t != "harness" and rank[stage(t)] > rank[stage(m)]]
    assert not upward, "imports that point up the stage order:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_cli() -> None:
    offenders = [m for m, targets in graph().items()
                 if stage(m) != "cli" and any(stage(t) == "cli" for t in targets)]
    assert not offenders


def test_every_module_says_why_it_exists() -> None:
    missing = [name for name, path in modules().items()
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    """The import reader resolves relative and lazy imports, so an upward one cannot
    hide in a function body or behind dots."""
    known = {"harness.core.process": tmp_path / "process.py",
             "harness.replay": tmp_path / "replay.py",
             "harness.core.elf": tmp_path / "elf.py"}
    source = tmp_path / "process.py"
    source.write_text('"""x"""\nfrom . import elf\n'
                      'def f():\n    from ..replay import open_case\n')
    assert imports("harness.core.process", source, known) == {"harness.core.elf",
                                                              "harness.replay"}
