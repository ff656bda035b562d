"""The replay's memory, as the kernel's bpf_probe_read_user sees a live process.

Replay serves a read from the core, and where the core lacks the bytes (cores
leave out unmodified file pages) from the file behind the mapping. The kernel
cannot: bpf_probe_read_user runs with page faults disabled, so a page that is
not in the process's page tables -- a file page nothing has touched -- fails
the read, whatever the file holds. `coredump live -compare` found this
difference (testsources/untouched.c: the kernel stopped with
native_read_return_address, replay read the file and went on).

A core does not say which pages were present; the live process does:
/proc/PID/pagemap has a "present" bit per virtual page. So for the replay
beside a live run, a read the core does not serve succeeds only if all its
pages are present in the process, as in the kernel. (Replays of recorded cases
keep reading files: their process is gone, and with it this knowledge.)
"""

from __future__ import annotations

import os

from ..core.process import Process
from ..errors import HarnessError

PAGEMAP_ENTRY = 8
PAGE_PRESENT = 1 << 63  # Documentation/admin-guide/mm/pagemap.rst


class ResidentReader:
    """A MemoryReader over a Process that fails where the live process `pid`
    has no page mapped and the core has no bytes."""

    def __init__(self, process: Process, pid: int) -> None:
        self.process = process
        self.page_size = process.core.page_size
        try:
            self._pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except OSError as e:
            raise HarnessError(f"cannot read /proc/{pid}/pagemap ({e.strerror}): live "
                               "-compare needs it to replay as the kernel reads") from e
        self._present: dict[int, bool] = {}
        self.refused = 0  # reads the file could serve but the kernel could not

    def page_present(self, page: int) -> bool:
        found = self._present.get(page)
        if found is None:
            entry = os.pread(self._pagemap, PAGEMAP_ENTRY, page * PAGEMAP_ENTRY)
            found = len(entry) == PAGEMAP_ENTRY and \
                bool(int.from_bytes(entry, "little") & PAGE_PRESENT)
            self._present[page] = found
        return found

    def __call__(self, addr: int, size: int) -> bytes | None:
        data = self.process.read(addr, size)
        if data is None:
            return None
        page_size, core = self.page_size, self.process.core
        pos, end = addr, addr + size
        while pos < end:
            piece_end = min(end, (pos // page_size + 1) * page_size)
            if core.read(pos, piece_end - pos) is None and not self.page_present(
                    pos // page_size):
                self.refused += 1
                return None
            pos = piece_end
        return data

    def close(self) -> None:
        os.close(self._pagemap)
