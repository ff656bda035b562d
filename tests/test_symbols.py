"""Function names beside addresses (core/symbols.py), on real binaries built here:
the module's own tables, .gnu_debugdata (xz MiniDebugInfo) and a separate debug
file found by build id, the three places distributions leave names."""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.core.module import Module
from harness.core.symbols import SymbolTable, build_id, function_symbols, module_symbols
from harness.paths import REPO_ROOT

SOURCE = REPO_ROOT / "testsources" / "chain.c"


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install binutils gcc)")


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """chain.c at -O2 with a build id: as built, stripped, stripped with
    .gnu_debugdata, and its debug file."""
    _need("gcc", "objcopy", "strip")
    out = tmp_path_factory.mktemp("symbols")
    full = out / "chain"
    _run("gcc", "-O2", "-g", "-Wl,--build-id", "-o", full, SOURCE)
    stripped = out / "chain.stripped"
    _run("strip", "-s", "-o", stripped, full)
    debug = out / "chain.debug"
    _run("objcopy", "--only-keep-debug", full, debug)
    mini = out / "chain.mini.xz"
    mini.write_bytes(lzma.compress(debug.read_bytes(), format=lzma.FORMAT_XZ))
    minidebug = out / "chain.minidebug"
    _run("objcopy", "--add-section", f".gnu_debugdata={mini}", stripped, minidebug)
    return {"full": full, "stripped": stripped, "debug": debug, "minidebug": minidebug}


def _address_of(path: Path, name: str) -> int:
    symbols = function_symbols(Module(str(path), path).read)
    return next(addr for addr, (sym, _) in symbols.items() if sym == name)


def test_own_symtab_names_functions_inside_their_size(built: dict[str, Path]) -> None:
    module = Module(str(built["full"]), built["full"])
    table = module_symbols(module, debug_dirs=())
    d = _address_of(built["full"], "d")
    assert table.lookup(d) == "d+0x0" and table.lookup(d + 5) == "d+0x5"
    assert table.sources == ("own",)
    assert table.lookup(0) is None


def test_stripped_module_has_no_local_names(built: dict[str, Path]) -> None:
    module = Module(str(built["stripped"]), built["stripped"])
    assert module_symbols(module, debug_dirs=()).lookup(_address_of(built["full"], "d")) is None


def test_gnu_debugdata_names_a_stripped_module(built: dict[str, Path]) -> None:
    module = Module(str(built["minidebug"]), built["minidebug"])
    table = module_symbols(module, debug_dirs=())
    assert ".gnu_debugdata" in table.sources
    assert table.lookup(_address_of(built["full"], "c") + 3) == "c+0x3"


def test_debug_file_found_by_build_id(built: dict[str, Path], tmp_path: Path) -> None:
    module = Module(str(built["stripped"]), built["stripped"])
    build = build_id(module.read)
    assert build is not None and len(build) == 40
    place = tmp_path / ".build-id" / build[:2] / f"{build[2:]}.debug"
    place.parent.mkdir(parents=True)
    shutil.copy(built["debug"], place)
    table = module_symbols(module, debug_dirs=(tmp_path,))
    assert table.sources[-1] == str(place)
    assert table.lookup(_address_of(built["full"], "b") + 1) == "b+0x1"


def test_zero_size_symbols_end_at_the_next_one() -> None:
    table = SymbolTable.of({0x100: ("f", 0), 0x180: ("g", 0x10)}, ("own",))
    assert table.lookup(0x17F) == "f+0x7f"
    assert table.lookup(0x18F) == "g+0xf" and table.lookup(0x190) is None


def test_garbage_is_no_symbols() -> None:
    assert function_symbols(lambda offset, size: b"\x7fELF" + b"\xff" * (size - 4)) == {}
    assert build_id(lambda offset, size: None) is None
