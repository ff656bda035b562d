"""The process model: a core's threads and memory plus the module files it mapped.

Memory reads come from the core where it holds the bytes and otherwise from
the file behind the mapping (cores normally leave out unmodified file pages,
such as code and read-only data). Module files are mapped, not read.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from . import anon_code, linkmap
from .elfcore import AT_BASE, AT_ENTRY, CoreFile, FileMapping, ThreadState
from .module import LoadSegment, Module
from .vdso import vdso_module


@dataclass
class Mapping:
    """A file mapping of the process, with the module behind it if we have it."""

    start: int
    end: int
    file_offset: int
    path: str
    module: Module | None = None
    load: LoadSegment | None = None

    @property
    def bias(self) -> int:
        """ELF virtual address = address - bias."""
        if self.load is None:
            return self.start - self.file_offset
        return self.start - self.load.vaddr + self.load.offset - self.file_offset

    def read(self, addr: int, size: int) -> bytes | None:
        if self.module is None or addr + size > self.end:
            return None
        offset = self.file_offset + (addr - self.start)
        if self.load is not None and offset + size > self.load.offset + self.load.filesz:
            return None  # beyond the file-backed part (e.g. .bss): only the core has it
        return self.module.read(offset, size)


@dataclass
class Process:
    """A frozen process: threads, mappings and a memory reader."""

    core: CoreFile
    modules: dict[str, Module] = field(default_factory=dict)  # by original path
    mappings: list[Mapping] = field(default_factory=list)
    # Modules no file backs, found in the core's memory (the vDSO): mapped and
    # unwound like the others, never bundled or handed to gdb as files.
    memory_modules: list[Module] = field(default_factory=list)
    # Read before the core: a live process's own memory (/proc/PID/mem), for the
    # agent of `coredump live`, whose core holds no memory (live/compare.py).
    live_memory: Callable[[int, int], bytes | None] | None = None

    def __post_init__(self) -> None:
        if not self.mappings:
            if self.core.mappings:
                self._set_mappings([self._mapping(m) for m in self.core.mappings])
            else:
                self._set_mappings(self._mappings_from_link_map())
        else:
            self._set_mappings(self.mappings)
        self._add_vdso()
        self._add_trampolines()

    def _add_vdso(self) -> None:
        found = vdso_module(self.core)
        if found is None or self.mapping_at(found[0]) is not None:
            return
        addr, module = found
        load = module.load_for_offset(0)
        size = max((seg.vaddr + seg.memsz - (load.vaddr if load else 0) for seg in module.loads),
                   default=0)
        page = self.core.page_size
        end = addr + max(page, (size + page - 1) // page * page)
        self.memory_modules.append(module)
        self._set_mappings([*self.mappings, Mapping(addr, end, 0, module.path, module, load)])

    def _add_trampolines(self) -> None:
        """Signal trampolines on anonymous executable pages (core/anon_code.py): each
        a module mapped from one byte before its page."""
        def covered(page: int) -> bool:
            mapping = self.mapping_at(page)
            return mapping is not None and mapping.module is not None

        added = []
        for page, code in anon_code.trampoline_pages(self.core, covered):
            module = anon_code.trampoline_module(self.core, page, code)
            self.memory_modules.append(module)
            added.append(Mapping(page - 1, page + len(code), anon_code.FILE_OFFSET, module.path,
                                 module, module.load_for_offset(anon_code.FILE_OFFSET)))
        if added:
            self._set_mappings([*self.mappings, *added])

    def all_modules(self) -> list[Module]:
        """File modules and memory modules: everything a frame can be in."""
        return [*self.modules.values(), *self.memory_modules]

    def _set_mappings(self, mappings: list[Mapping]) -> None:
        self.mappings = sorted(mappings, key=lambda m: m.start)
        self._starts = [m.start for m in self.mappings]

    def _module_mappings(self, module: Module, bias: int) -> list[Mapping]:
        loads = [(seg.offset, seg.vaddr, seg.memsz) for seg in module.loads]
        return [self._mapping(m) for m in
                linkmap.synthesize_mappings(module.path, bias, loads, self.core.page_size)]

    def loaded_objects(self) -> list[linkmap.LoadedObject]:
        """Executable and shared objects from the aux vector and link_map (no NT_FILE needed).
        Needs the executable among the modules; returns [] without it."""
        exe_path = linkmap.executable_path(self.core)
        exe = self.modules.get(exe_path) if exe_path else None
        entry = self.core.auxv.get(AT_ENTRY)
        if exe is None or exe_path is None or entry is None:
            return []
        bias = entry - exe.entry
        objects = [linkmap.LoadedObject(exe_path, bias)]
        if not self.mappings:  # reads below may need the executable's file pages
            self._set_mappings(self._module_mappings(exe, bias))
        if exe.dynamic_vaddr is not None:
            r_debug = linkmap.r_debug_address(self.read, bias + exe.dynamic_vaddr)
            if r_debug:
                objects += [o for o in linkmap.link_map_objects(self.read, r_debug)
                            if o.path != exe_path]
        return objects

    def _mappings_from_link_map(self) -> list[Mapping]:
        mappings: list[Mapping] = []
        for obj in self.loaded_objects():
            module = self.modules.get(obj.path)
            if module is not None:
                mappings += self._module_mappings(module, obj.bias)
        return mappings

    def _mapping(self, m: FileMapping) -> Mapping:
        module = self.modules.get(m.path)
        load = module.load_for_offset(m.file_offset) if module else None
        return Mapping(m.start, m.end, m.file_offset, m.path, module, load)

    @property
    def arch(self) -> str:
        return self.core.machine

    @property
    def pid(self) -> int:
        if self.core.process is not None:
            return self.core.process.pid
        return self.core.threads[0].lwp if self.core.threads else 0

    @property
    def threads(self) -> list[ThreadState]:
        return self.core.threads

    def mapping_at(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def module_at(self, addr: int) -> tuple[Module, int] | None:
        """The module mapped at a runtime address and its ELF virtual address there."""
        mapping = self.mapping_at(addr)
        if mapping is None or mapping.module is None:
            return None
        return mapping.module, addr - mapping.bias

    def _mapped_module_path(self, key: int) -> str | None:
        addr = self.core.auxv.get(key)
        mapping = self.mapping_at(addr) if addr else None
        return mapping.path if mapping is not None and mapping.module is not None else None

    def executable_path(self) -> str | None:
        """Path of the executable: the module mapped at the entry point (AT_ENTRY)."""
        return self._mapped_module_path(AT_ENTRY)

    def interpreter_path(self) -> str | None:
        """Path of the dynamic linker: the module mapped at AT_BASE (None if static)."""
        return self._mapped_module_path(AT_BASE)

    def read(self, addr: int, size: int) -> bytes | None:
        """Bytes at addr from the core, else from the mapped file; None if unknown."""
        if self.live_memory is not None:
            live = self.live_memory(addr, size)
            if live is not None:
                return live
        data = self.core.read(addr, size)
        if data is not None:
            return data
        mapping = self.mapping_at(addr)
        if mapping is not None:
            data = mapping.read(addr, size)
            if data is not None:
                return data
        data = self._read_pieces(addr, size)
        if data is None and self.core.dropped:
            self.core.was_dropped(addr, size)  # a skinny core left it out: noted
        return data

    def file_sources(self, addr: int, size: int) -> set[str]:
        """Paths of the mapped files a read of [addr, addr+size) takes bytes from,
        page by page (the core serves the rest). For recording: these files must
        be bundled for the read to give the same bytes on replay."""
        paths: set[str] = set()
        page = self.core.page_size
        pos, end = addr, addr + size
        while pos < end:
            piece_end = min(end, (pos // page + 1) * page)
            if self.core.read(pos, piece_end - pos) is None:
                mapping = self.mapping_at(pos)
                if mapping is not None and mapping.read(pos, piece_end - pos) is not None:
                    paths.add(mapping.path)
            pos = piece_end
        return paths

    def _read_pieces(self, addr: int, size: int) -> bytes | None:
        """A read straddling a page boundary may need both sources."""
        page = self.core.page_size
        if size <= 1 or (addr // page) == ((addr + size - 1) // page):
            return None
        split = (addr // page + 1) * page
        head = self.read(addr, split - addr)
        if head is None:
            return None
        tail = self.read(split, addr + size - split)
        return None if tail is None else head + tail

    def close(self) -> None:
        for module in self.all_modules():
            module.close()
        self.core.close()
