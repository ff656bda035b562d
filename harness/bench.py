"""`coredump bench`: what users wait for, measured against the tools they compare us with.

For each case (or core), in interleaved rounds so that a busy machine slows
every tool alike:

- our whole-process `coredump analyze`, warm (caches filled) and cold (the
  derived-data cache empty: unwind data, delta tables and code models are
  derived again; the unwinder build and the extracted blobs are kept, as they
  are after `scripts/bootstrap`);
- the peers on the same core and modules, where installed: gdb (gdb-multiarch
  for arm64) `thread apply all bt`, eu-stack where the modules sit at their
  recorded paths (it has no sysroot option), and pystack on cases with Python
  frames (`pystack core`, Python frames only);
- in one process, replaying the case repeatedly: the time to describe the
  process to the maps (per process), and the time to unwind its threads, from
  which a least-squares fit over all cases gives the cost per thread and per
  frame.

Each run is a child process timed with wall-clock time, and its peak RSS
taken by GNU time where installed. Results are medians. Nothing here asserts a
speed: the numbers are for people (README "Performance") and for machines
(`-json`).
"""

from __future__ import annotations

import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cases.case_file import load_case
from .cases.store import store_for
from .errors import HarnessError
from .paths import CACHE_ENV, cache_root
from .record.gdb_oracle import gdb_for, make_sysroot
from .record.pystack_oracle import pystack_command
from .record.verify import has_python_frames
from .replay import open_case, unwind_process

OURS = "coredump analyze"
KEEP_WHEN_COLD = ("build", "blobs")  # not derived per core: kept by the cold runs


@dataclass
class Sample:
    seconds: float
    rss_kb: int


@dataclass
class ToolResult:
    """One tool on one case: every run, and why it did not run if it did not."""

    tool: str
    samples: list[Sample] = field(default_factory=list)
    skipped: str = ""

    @property
    def median_s(self) -> float | None:
        return statistics.median(s.seconds for s in self.samples) if self.samples else None

    @property
    def peak_rss_kb(self) -> int | None:
        return max(s.rss_kb for s in self.samples) if self.samples else None


@dataclass
class CaseBench:
    case: str
    arch: str
    threads: int
    frames: int
    tools: dict[str, ToolResult]
    attach_s: float  # in one process, warm: filling the maps for the process (median)
    replay_s: float  # in one process, warm: unwinding every thread (median)


@dataclass
class BenchReport:
    cases: list[CaseBench]
    per_thread_us: float | None
    per_frame_us: float | None
    repeat: int
    suite_s: dict[str, float] = field(default_factory=dict)  # "-n auto"/"-n 0": seconds

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        for case, bench in zip(doc["cases"], self.cases, strict=True):  # type: ignore[call-overload]
            for name, tool in bench.tools.items():
                case["tools"][name]["median_s"] = tool.median_s
                case["tools"][name]["peak_rss_kb"] = tool.peak_rss_kb
        return doc


# Peak RSS through GNU time's %M where it exists: a child's own ru_maxrss counts the
# pages it shared with this Python process before exec, which swamps small tools.
TIME = "/usr/bin/time"


def run_timed(argv: Sequence[str], env: dict[str, str] | None = None,
              timeout: float = 300, ok: tuple[int, ...] = (0,)) -> Sample:
    """One child run: wall-clock seconds and peak RSS (KB, 0 if unknown); output
    discarded. The time includes GNU time's own start (about a millisecond)."""
    with tempfile.NamedTemporaryFile(prefix="coredump-bench-rss-") as rss_file:
        wrapped = [TIME, "-q", "-f", "%M", "-o", rss_file.name, *argv] \
            if os.access(TIME, os.X_OK) else list(argv)
        sample = _run(wrapped, env, timeout, ok)
        if wrapped[0] == TIME:
            text = Path(rss_file.name).read_text().strip().splitlines()
            sample.rss_kb = int(text[-1]) if text and text[-1].isdigit() else 0
        return sample


def _run(argv: Sequence[str], env: dict[str, str] | None, timeout: float,
         ok: tuple[int, ...]) -> Sample:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, timeout=timeout)
    except OSError as e:
        raise HarnessError(f"cannot run {argv[0]}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{' '.join(argv[:4])} ... took more than {timeout:.0f} s") from e
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        stderr = proc.stderr.decode(errors="replace").strip()[-300:]
        raise HarnessError(f"{' '.join(argv[:6])} ... exited {proc.returncode}: {stderr}")
    return Sample(seconds, 0)


def _cold_cache(tmp: Path) -> Path:
    """A cache with only the build and blobs of the real one (linked, not copied)."""
    real = cache_root()
    tmp.mkdir(parents=True, exist_ok=True)
    for name in KEEP_WHEN_COLD:
        if (real / name).exists() and not (tmp / name).exists():
            (tmp / name).symlink_to(real / name, target_is_directory=True)
    return tmp


def _at_recorded_paths(files: dict[str, str], exe: str) -> bool:
    """eu-stack reads shared objects from the core's recorded paths (the executable
    is given to it): are they there, the same size as the bundled ones?"""
    try:
        return all(os.path.getsize(original) == os.path.getsize(local)
                   for original, local in files.items() if original != exe)
    except OSError:
        return False


class _Runs:
    """The argv of every tool for one case, and the results gathered over rounds."""

    def __init__(self, case_path: Path, sysroot_dir: Path, cold_dir: Path,
                 peers: bool, baseline: Path | None = None) -> None:
        case = load_case(case_path)
        process = open_case(case, store_for(case))
        try:
            self.arch = process.arch
            core = str(process.core.path)
            exe = process.executable_path()
            files = {path: str(m.local_path) for path, m in process.modules.items()}
        finally:
            process.close()
        ours = [sys.executable, "-m", "harness.cli", "analyze", "-case", str(case_path)]
        self.argv: dict[str, tuple[list[str], dict[str, str] | None]] = {
            f"{OURS} (warm)": (ours, None),
            f"{OURS} (cold)": (ours, dict(os.environ, **{CACHE_ENV: str(cold_dir)})),
        }
        self.ok: dict[str, tuple[int, ...]] = {}
        if baseline is not None:
            # Another checkout of the harness, same case, same caches for what it shares.
            # The editable install's import hook would find this checkout first: drop it.
            code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' "
                    f"not in type(f).__module__]; sys.path.insert(0, {str(baseline)!r}); "
                    "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
            env = dict(os.environ, **{CACHE_ENV: str(cache_root())})
            self.argv[f"{OURS} (baseline {baseline.name}, warm)"] = (
                [sys.executable, "-c", code, *ours[3:]], env)
        self.cold_dir = cold_dir
        self.results = {name: ToolResult(name) for name in self.argv}
        if not peers:
            return
        if case.no_module_bundling or exe is None or exe not in files:
            why = "the case bundles no modules for other tools to read" \
                if case.no_module_bundling else "the case has no executable module"
            self._skip("gdb", why)
            self._skip("eu-stack", why)
            return
        sysroot = make_sysroot(str(sysroot_dir), files)
        gdb = shutil.which(gdb_for(self.arch))
        if gdb is None:
            self._skip("gdb", f"{gdb_for(self.arch)} is not installed")
        else:
            self._add("gdb", [gdb, "-batch", "-nx", "-iex", f"set sysroot {sysroot}",
                              "-ex", "thread apply all bt",
                              os.path.join(sysroot, exe.lstrip("/")), core])
        if has_python_frames(case.threads):  # the Python oracle, on Python cases
            pystack = pystack_command()
            if pystack is None:
                self._skip("pystack", "pystack is not installed (.venv/bin/pip install pystack)")
            else:
                self._add("pystack", [pystack, "core", "--no-color", core,
                                      os.path.join(sysroot, exe.lstrip("/")),
                                      "--lib-search-root", sysroot])
        eu_stack = shutil.which("eu-stack")
        if eu_stack is None:
            self._skip("eu-stack", "eu-stack is not installed (apt-get install elfutils)")
        elif not _at_recorded_paths(files, exe):
            self._skip("eu-stack", "the modules are not at their recorded paths on this "
                                   "machine (eu-stack has no sysroot option)")
        else:
            self._add("eu-stack", [eu_stack, "--core", core, "-e", files[exe]])
            self.ok["eu-stack"] = (0, 1)  # 1: some thread's walk ended in an error

    def _add(self, name: str, argv: list[str]) -> None:
        self.argv[name] = (argv, None)
        self.results[name] = ToolResult(name)

    def _skip(self, name: str, why: str) -> None:
        self.results[name] = ToolResult(name, skipped=why)

    def round(self) -> None:
        for name, (argv, env) in self.argv.items():
            if name.endswith("(cold)"):
                for derived in self.cold_dir.iterdir():
                    if derived.name not in KEEP_WHEN_COLD:
                        shutil.rmtree(derived) if derived.is_dir() else derived.unlink()
            self.results[name].samples.append(run_timed(argv, env, ok=self.ok.get(name, (0,))))


def _replay_seconds(case_path: Path, repeat: int) -> tuple[float, float, int, int]:
    """In one process, warm, medians: (seconds to describe the process to the
    unwinder's maps, seconds to unwind every thread), threads, frames."""
    from .bpf.agent import Agent
    from .bpf.bridge import get_unwinder

    case = load_case(case_path)
    process = open_case(case, store_for(case))
    try:
        result = unwind_process(process, frozenset())  # warm: build, tables, pages
        unwinder = get_unwinder(process.arch)
        attach_times, unwind_times = [], []
        for _ in range(max(3, repeat * 4)):
            start = time.perf_counter()
            Agent(unwinder, process).attach()
            middle = time.perf_counter()
            for thread in process.threads:
                unwinder.unwind(thread.regs, process.pid, thread.lwp, process.read)
            unwind_times.append(time.perf_counter() - middle)
            attach_times.append(middle - start)
    finally:
        process.close()
    frames = sum(len(t.frames) for t in result.threads)
    return (statistics.median(attach_times), statistics.median(unwind_times),
            len(result.threads), frames)


def _fit(points: list[tuple[int, int, float]]) -> tuple[float | None, float | None]:
    """Least squares t = a*threads + b*frames: (a, b) in seconds, None if underdetermined."""
    sxx = sum(t * t for t, _f, _s in points)
    syy = sum(f * f for _t, f, _s in points)
    sxy = sum(t * f for t, f, _s in points)
    sxs = sum(t * s for t, _f, s in points)
    sys_ = sum(f * s for _t, f, s in points)
    det = sxx * syy - sxy * sxy
    if len(points) < 2 or abs(det) < 1e-9:
        return None, None
    return (sxs * syy - sys_ * sxy) / det, (sxx * sys_ - sxy * sxs) / det


def time_suite(progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The test suite once with `-n auto` and once with `-n 0` (wall-clock seconds)."""
    out = {}
    for workers in ("auto", "0"):
        if progress:
            progress(f"test suite with -n {workers}")
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers]
        out[f"-n {workers}"] = run_timed(argv, timeout=3600).seconds
    return out


def bench(case_paths: Sequence[Path], repeat: int = 5, peers: bool = True,
          progress: Callable[[str], None] | None = None,
          baseline: Path | None = None, suite: bool = False) -> BenchReport:
    """Run every tool on every case `repeat` times, interleaved; see the module doc.
    `baseline`: another checkout of the harness whose warm analyze is timed too."""
    if repeat < 1:
        raise HarnessError("bench: -repeat must be at least 1")
    if baseline is not None and not (baseline / "harness" / "cli").is_dir():
        raise HarnessError(f"bench: {baseline} is not a checkout of the harness")
    # Bytecode compiled, as after scripts/bootstrap: with PYTHONDONTWRITEBYTECODE set,
    # every run would otherwise compile the sources again.
    compileall.compile_dir(str(Path(__file__).resolve().parent), quiet=2)
    if baseline is not None:
        compileall.compile_dir(str(baseline / "harness"), quiet=2)
    cases: list[CaseBench] = []
    points = []
    with tempfile.TemporaryDirectory(prefix="coredump-bench-") as tmp:
        all_runs = []
        for i, path in enumerate(case_paths):
            root = Path(tmp) / str(i)
            all_runs.append((path, _Runs(path, root / "sysroot", _cold_cache(root / "cache"),
                                         peers, baseline)))
        for n in range(repeat):
            for path, runs in all_runs:
                if progress:
                    progress(f"round {n + 1}/{repeat}: {path.parent.name}/{path.stem}")
                runs.round()
        for path, runs in all_runs:
            attach_s, replay_s, threads, frames = _replay_seconds(path, repeat)
            points.append((threads, frames, replay_s))
            cases.append(CaseBench(f"{path.parent.name}/{path.stem}", runs.arch, threads,
                                   frames, runs.results, attach_s, replay_s))
    per_thread, per_frame = _fit(points)
    return BenchReport(cases, None if per_thread is None else per_thread * 1e6,
                       None if per_frame is None else per_frame * 1e6, repeat,
                       time_suite(progress) if suite else {})
