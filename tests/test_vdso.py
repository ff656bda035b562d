"""The vDSO is a module read from the core's memory (issue: native frames everywhere).

tests/test_cases.py replays testdata/amd64/vdso*.json (threads stopped inside
clock_gettime and gettimeofday, by gcore and by the kernel) against frames
checked with gdb; before the vDSO was a module their top frames were
`native_pc_not_mapped`. Here: what the module is and what is not done with it.
"""

from __future__ import annotations

import pytest

from harness.cases.store import store_for
from harness.core.elfcore import AT_SYSINFO_EHDR
from harness.core.vdso import VDSO_NAME, vdso_image
from harness.paths import cache_root
from harness.replay import open_case
from harness.unwind_data import module_unwind_data
from tests.casefiles import bundled_case


@pytest.mark.parametrize("name", ["vdso", "vdso.sigill"])
def test_the_vdso_comes_from_the_core_and_is_not_bundled(name: str) -> None:
    case = bundled_case(name)
    process = open_case(case, store_for(case))
    try:
        (vdso,) = process.memory_modules
        assert vdso.name == VDSO_NAME
        addr = process.core.auxv[AT_SYSINFO_EHDR]
        found = process.module_at(addr + 0x800)
        assert found is not None and found[0] is vdso
        data = module_unwind_data(vdso.local_path, vdso.content_id, cache_root())
        assert data.sources == [".eh_frame"] and data.fde_count > 0
        assert VDSO_NAME not in {m.local_path.rsplit("/", 1)[-1] for m in case.modules}
        assert all(m.path.startswith("/") for m in process.modules.values())
        in_vdso = [t for t in case.threads if t.frames[0].startswith(VDSO_NAME + "+")]
        assert in_vdso, "the case has a thread stopped in the vDSO"
    finally:
        process.close()


def test_a_core_without_vdso_pages_has_no_vdso_module() -> None:
    case = bundled_case("vdso")
    process = open_case(case, store_for(case))
    try:
        process.core.auxv[AT_SYSINFO_EHDR] = 0x10  # nothing stored there
        assert vdso_image(process.core) is None
        process.core.auxv.pop(AT_SYSINFO_EHDR)
        assert vdso_image(process.core) is None
    finally:
        process.close()
