"""Module discovery: which files a core's modules are, found through the one sysroot
resolver, with no silent fallback to this machine's files.

The cores and modules are the bundled cases' own (a qemu-user arm64 core, which has
no file list, so its modules come from the dynamic linker's link_map).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.cases.store import store_for
from harness.core.discovery import discover_modules, locate
from harness.core.elfcore import CoreFile
from harness.errors import HarnessError
from harness.files import sha256_file
from tests.casefiles import bundled_case

LIBC = "/lib/libc.so.6"


def _place(root: Path, path: str, source: Path) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.fixture
def arm64_case() -> tuple[Path, dict[str, Path], dict[str, str]]:
    """The arm64 threads case: its core, and {original path: module file, blob id}."""
    case = bundled_case("threads", "arm64")
    store = store_for(case)
    files = {m.local_path: store.local_path(m.ref) for m in case.modules}
    refs = {m.local_path: m.ref for m in case.modules}
    return store.local_path(case.coredump_ref), files, refs


def _sysroot(tmp_path: Path, files: dict[str, Path], skip: str = "") -> Path:
    root = tmp_path / "root"
    for path, local in files.items():
        if path != skip:
            _place(root, path, local)
    return root


def test_absolute_links_in_a_sysroot_stay_inside_it(
        arm64_case: tuple[Path, dict[str, Path], dict[str, str]], tmp_path: Path) -> None:
    """The bug of record._find_under_sysroot: /lib/libc.so.6 is an absolute link in
    the sysroot (as on the machine it comes from); joining the paths and letting the
    OS follow the link reached this machine's file at the link's target, a decoy
    here, and bundled it."""
    core_path, files, refs = arm64_case
    root = _sysroot(tmp_path, files, skip=LIBC)
    target = tmp_path / "elsewhere" / "libc.so.6"  # the link's target path...
    _place(root, str(target), files[LIBC])  # ...holds the real libc inside the sysroot
    target.parent.mkdir(parents=True)
    shutil.copyfile(files["/lib/ld-linux-aarch64.so.1"], target)  # and a decoy outside
    os.symlink(target, root / "lib" / "libc.so.6")
    with CoreFile(core_path) as core:
        found = discover_modules(core, str(root))
    assert set(found) == set(files)
    for path, (local, _) in found.items():
        assert sha256_file(local) == refs[path], path


def test_a_file_missing_from_the_sysroot_is_not_taken_from_the_host(
        arm64_case: tuple[Path, dict[str, Path], dict[str, str]], tmp_path: Path) -> None:
    core_path, files, _ = arm64_case
    root = _sysroot(tmp_path, files, skip=LIBC)
    host_copy = tmp_path / "host"  # stands for this machine: it has the file
    _place(host_copy, LIBC, files[LIBC])
    messages: list[str] = []
    with CoreFile(core_path) as core:
        found = discover_modules(core, str(root), progress=messages.append)
    assert LIBC not in found
    assert any(LIBC in m and "not available" in m for m in messages), messages
    # Listing another root is how a caller asks for a second place (qemu-user's -L
    # prefix, then the host): then it is found, and the message says where.
    messages.clear()
    with CoreFile(core_path) as core:
        found = discover_modules(core, [str(root), str(host_copy)], progress=messages.append)
    assert Path(found[LIBC][0]).is_relative_to(host_copy)
    assert any(f"{LIBC} is not under {root}" in m for m in messages), messages


def test_a_module_of_another_architecture_is_refused(
        arm64_case: tuple[Path, dict[str, Path], dict[str, str]], tmp_path: Path) -> None:
    core_path, files, _ = arm64_case
    amd64 = bundled_case("threads")
    amd64_libc = next(m for m in amd64.modules if m.local_path.endswith("/libc.so.6"))
    root = _sysroot(tmp_path, files, skip=LIBC)
    _place(root, LIBC, store_for(amd64).local_path(amd64_libc.ref))
    messages: list[str] = []
    with CoreFile(core_path) as core:
        found = discover_modules(core, str(root), progress=messages.append)
    assert LIBC not in found
    assert any("for amd64, but the core is arm64" in m for m in messages), messages


def test_missing_executable_and_bad_sysroot_are_clear_errors(
        arm64_case: tuple[Path, dict[str, Path], dict[str, str]], tmp_path: Path) -> None:
    core_path, files, _ = arm64_case
    exe = next(p for p in files if "/testsources/" in p)
    root = _sysroot(tmp_path, files, skip=exe)
    with CoreFile(core_path) as core:
        with pytest.raises(HarnessError, match="executable .* not found"):
            discover_modules(core, str(root))
        found = discover_modules(core, str(root), executable=str(files[exe]))
        assert set(found) == set(files)
        with pytest.raises(HarnessError, match="is not a directory"):
            discover_modules(core, str(tmp_path / "nowhere"))


def test_locate_resolves_relative_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libx.so.1.2").write_bytes(b"\x7fELF")
    (root / "lib").symlink_to("usr/lib")
    (root / "usr" / "lib" / "libx.so.1").symlink_to("libx.so.1.2")
    (root / "usr" / "lib" / "escape").symlink_to("../../../../../../etc/passwd")
    assert locate("/lib/libx.so.1", [str(root)]) == str(root / "usr" / "lib" / "libx.so.1.2")
    assert locate("/lib/escape", [str(root)]) is None  # .. stops at the root
