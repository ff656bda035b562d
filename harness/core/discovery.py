"""Which files a core's modules are, and where to find them here.

A core names the files its process had mapped (NT_FILE) or, for qemu-user
cores that lack the list, lets the dynamic linker's link_map name them (see
linkmap.py). Each name is then looked up in the search roots: `-sysroot`
directories, or this machine's `/` by default. Symbolic links are resolved
inside the root they are found in (confine.resolve_under), and there is no implicit
fallback: a file missing from the roots is reported and left out, never
replaced by the host's file of the same name (a caller that wants the host as a
last resort, as qemu-user does, lists `/` as a root, and every file taken from a
later root is reported). A file whose ELF machine is not
the core's is refused as well: it cannot be the file the process mapped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..arch import ARCHES, arch_of_machine
from ..confine import original_path_problem, resolve_under
from ..errors import HarnessError
from . import elf
from .elfcore import CoreFile
from .linkmap import executable_path
from .module import Module
from .process import Process

# {original path: (local file, content id or None to hash it)}
ModuleFiles = dict[str, tuple[str | Path, str | None]]
Progress = Callable[[str], None]
HOST_ROOT = "/"
_NOT_MODULES = ("/dev/", "/memfd:")  # mapped, but never ELF files on disk


def _quiet(_: str) -> None:
    pass


def search_roots(sysroot: str | Sequence[str] | None) -> list[str]:
    """The roots to look files up in, in order: the given sysroots, or `/`."""
    if sysroot is None:
        return [HOST_ROOT]
    roots = [sysroot] if isinstance(sysroot, str) else list(sysroot)
    for root in roots:
        if not os.path.isdir(root):
            raise HarnessError(f"sysroot {root} is not a directory")
    return roots or [HOST_ROOT]


def locate(path: str, roots: Sequence[str]) -> str | None:
    """The local file for an absolute path of the core's machine: under the first root
    that has it, links resolved inside that root; None if no root has it."""
    for root in roots:
        found = resolve_under(root, path)
        if found is not None:
            return found
    return None


def elf_machine(path: str | os.PathLike[str]) -> int | None:
    """e_machine of an ELF64 little-endian file, None if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(elf.EHDR_SIZE)
    except OSError:
        return None
    return None if elf.ident_problem(head) else elf.Ehdr.parse(head).machine


def _where(path: str, roots: Sequence[str]) -> str:
    return " or ".join(os.path.join(r, path.lstrip("/")) for r in roots)


class _Finder:
    """Looks up the core's files in the roots and checks they can be its modules."""

    def __init__(self, core: CoreFile, roots: Sequence[str], progress: Progress) -> None:
        self.core = core
        self.roots = roots
        self.progress = progress
        self.machine = ARCHES[core.machine].elf_machine
        self.missing: list[str] = []  # the core's paths no root has

    def find(self, path: str, warn_non_elf: bool = False) -> str | None:
        problem = original_path_problem(path)
        if problem:  # a case could not name it: record nothing a replay would refuse
            self.progress(f"warning: the core's file name {path[:200]!r} {problem}; left out")
            return None
        local = locate(path, self.roots)
        if local is not None and len(self.roots) > 1 and \
                resolve_under(self.roots[0], path) is None:
            self.progress(f"note: {path} is not under {self.roots[0]}; using {local}")
        if local is None:
            self.missing.append(path)
            self.progress(f"warning: {path} is not available at {_where(path, self.roots)}; "
                          "frames in it cannot be attributed")
            return None
        machine = elf_machine(local)
        if machine is None:
            if warn_non_elf:
                self.progress(f"warning: {local} (for {path}) is not an ELF file")
            return None  # a mapped data file (locale archive, cache...): not a module
        if machine != self.machine:
            other = arch_of_machine(machine)
            self.progress(f"warning: {local} (for {path}) is an ELF file for "
                          f"{other.name if other else f'machine {machine}'}, but the core is "
                          f"{self.core.machine}; left out")
            return None
        return local


def _from_file_list(finder: _Finder) -> ModuleFiles:
    found: ModuleFiles = {}
    seen: set[str] = set()  # one message per file, not per mapping of it
    for mapping in finder.core.mappings:
        path = mapping.path
        if path in seen or not path.startswith("/") or path.startswith(_NOT_MODULES):
            continue
        seen.add(path)
        if path.endswith(" (deleted)"):
            finder.progress(f"warning: {path} was deleted before the dump; frames in it "
                            "cannot be attributed")
            continue
        local = finder.find(path)
        if local is not None:
            found[path] = (local, None)
    return found


def _from_link_map(finder: _Finder, executable: str | None) -> ModuleFiles:
    """A core without NT_FILE (qemu-user): the executable from AT_EXECFN, the rest
    from the dynamic linker's link_map, read through the executable's .dynamic."""
    exe = executable_path(finder.core)
    if exe is None:
        raise HarnessError("the core has neither a file list (NT_FILE) nor a readable "
                           "AT_EXECFN; cannot tell which executable it belongs to")
    exe_local = executable if executable is not None else finder.find(exe, warn_non_elf=True)
    if exe_local is None:
        raise HarnessError(
            f"executable {exe} not found at {_where(exe, finder.roots)}; pass -sysroot "
            "with the directory that holds it (qemu-user runs the executable from the "
            "host: `coredump record-qemu` records such cores)")
    found: ModuleFiles = {exe: (exe_local, None)}
    module = Module(exe, exe_local)
    try:
        objects = Process(finder.core, {exe: module}).loaded_objects()
    finally:
        module.close()
    for obj in objects[1:]:
        local = finder.find(obj.path, warn_non_elf=True)
        if local is not None:
            found[obj.path] = (local, None)
    return found


def discover_modules(core: CoreFile, sysroot: str | Sequence[str] | None = None, *,
                     executable: str | None = None, progress: Progress = _quiet,
                     missing: list[str] | None = None) -> ModuleFiles:
    """The module files of a core, found in the search roots (see the module docstring).

    `executable` is the local file of the executable when it is known otherwise
    (qemu-user ran it from the host); it only matters for cores without NT_FILE.
    The core's paths that no root has are appended to `missing`, so a later
    failure can name them as its cause.
    """
    finder = _Finder(core, search_roots(sysroot), progress)
    if missing is not None:
        finder.missing = missing
    if core.mappings:
        found = _from_file_list(finder)
        if not found and sysroot is not None:
            raise HarnessError(
                f"none of the {len({m.path for m in core.mappings})} files the core maps is "
                f"under {' or '.join(finder.roots)}: is it the right -sysroot? (the core "
                f"lists e.g. {core.mappings[0].path})")
        return found
    return _from_link_map(finder, executable)
