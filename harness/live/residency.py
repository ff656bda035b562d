"""The replay's memory, as the kernel's bpf_probe_read_user sees a live process.

bpf_probe_read_user runs with page faults disabled: a page that is not in the
process's page tables fails the read, whatever a file or a core holds for it.
Replay reads a core, and where the core lacks the bytes (cores leave out
unmodified file pages) the file behind the mapping; a core holds zeros for
anonymous memory nothing ever touched. `coredump live -compare` found both
differences (testsources/untouched.c): the kernel stopped with
native_read_return_address where replay read the file, or zeros, and went on.

A core does not say which pages were present; the live process does, in
/proc/PID/pagemap's "present" bit. gcore changes it (reading untouched
anonymous memory maps the zero page there), so the snapshot is taken after
the live capture and before the gcore that replay reads, and replay beside a
live run reads a page only if it was present then. (Replays of recorded cases
read as before: their process is gone, and with it this knowledge.)
"""

from __future__ import annotations

import bisect
import os
from array import array

from ..core.process import Process
from ..errors import HarnessError

PAGEMAP_ENTRY = 8
PAGE_PRESENT = 1 << 63  # Documentation/admin-guide/mm/pagemap.rst
# Mappings larger than this (address-space reservations) are not snapshotted:
# reads there are not checked (the snapshot stays small for any process).
MAX_SNAPSHOT_MAPPING = 1 << 32


class PageSnapshot:
    """Which pages of a live process are present in its page tables, now."""

    def __init__(self, pid: int, page_size: int) -> None:
        self.page_size = page_size
        self.ranges: list[tuple[int, int]] = []  # snapshotted [first page, end page)
        self.present: set[int] = set()
        try:
            maps = open(f"/proc/{pid}/maps").read().splitlines()
            fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except OSError as e:
            raise HarnessError(f"cannot read the page tables of process {pid} ({e.strerror}): "
                               "live -compare replays only what the kernel could read") from e
        try:
            for line in maps:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if end - start > MAX_SNAPSHOT_MAPPING:
                    continue
                first, count = start // page_size, (end - start) // page_size
                entries = array("Q")
                entries.frombytes(os.pread(fd, count * PAGEMAP_ENTRY, first * PAGEMAP_ENTRY))
                self.present.update(first + i for i, e in enumerate(entries)
                                    if e & PAGE_PRESENT)
                self.ranges.append((first, first + count))
        finally:
            os.close(fd)
        self._firsts = [first for first, _ in self.ranges]

    def page_present(self, page: int) -> bool | None:
        """Present or not; None for a page outside the snapshotted mappings."""
        if page in self.present:
            return True
        i = bisect.bisect_right(self._firsts, page) - 1
        if i >= 0 and page < self.ranges[i][1]:
            return False
        return None


class ResidentReader:
    """A MemoryReader over a Process that fails, as the kernel's read would,
    where the snapshot says a page was not present."""

    def __init__(self, process: Process, snapshot: PageSnapshot) -> None:
        self.process = process
        self.snapshot = snapshot
        self.refused = 0  # reads the core or a file could serve but the kernel could not

    def __call__(self, addr: int, size: int) -> bytes | None:
        page_size = self.snapshot.page_size
        for page in range(addr // page_size, (addr + max(size, 1) - 1) // page_size + 1):
            if self.snapshot.page_present(page) is False:
                self.refused += 1
                return None
        return self.process.read(addr, size)
