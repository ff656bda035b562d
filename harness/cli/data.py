"""`coredump upload`, `export-module` and `clean`: the test-data lifecycle commands."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..cases import lifecycle
from ..cases.case_file import find_cases
from ..cases.remote import require_remote
from ..cases.selection import resolve_cases
from ..cases.store import BlobStore, full_store
from ..errors import HarnessError
from .common import Subparsers, flag, testdata_flag


def _store(args: argparse.Namespace) -> BlobStore:
    return BlobStore(Path(args.testdata) / "blobs")


def _size(n: int) -> str:
    """Decimal units, as `ls -h --si` and rich's DownloadColumn print them."""
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


@contextmanager
def _byte_progress(label: str) -> Iterator[lifecycle.ByteProgress | None]:
    """A rich progress bar on a terminal (stderr); nothing otherwise."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def cmd_upload(args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.cases):
        raise HarnessError("give -all or case files (not both)")
    testdata = Path(args.testdata)
    paths = find_cases(testdata) if args.all else resolve_cases(args.cases, testdata)
    if not paths:
        raise HarnessError(f"no cases under {args.testdata}")
    remote = require_remote()
    with _byte_progress("uploading") as progress:
        report = lifecycle.upload(lifecycle.blobs_of_cases(paths), _store(args), remote,
                                  progress)
    print(f"uploaded {len(report.uploaded)} blobs ({_size(report.uploaded_bytes)}) to "
          f"{remote.url} in {report.seconds:.2f} s; {len(report.already_there)} already there")
    if args.full:
        with _byte_progress("uploading full cores") as progress:
            report = lifecycle.upload(lifecycle.full_cores_of_cases(paths), full_store(),
                                      remote, progress)
        print(f"uploaded {len(report.uploaded)} full cores ({_size(report.uploaded_bytes)}); "
              f"{len(report.already_there)} already there")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.has(args.id) and full_store().has(args.id):
        store = full_store()  # the full core behind a skinny case (its full-ref)
    out = lifecycle.export_blob(store, args.id, Path(args.out))
    print(f"wrote {out} ({_size(out.stat().st_size)})")
    return 0


def _print_garbage(items: list[lifecycle.Garbage], verb: str) -> None:
    for item in items:
        age = f"  ({item.age.days} days old)" if item.age is not None else ""
        print(f"{verb} {item.where}: {item.name}  {_size(item.size)}{age}")


def cmd_clean(args: argparse.Namespace) -> int:
    max_age = lifecycle.parse_duration(args.age)
    testdata = Path(args.testdata)
    if not find_cases(testdata):
        # With no case in sight every blob looks unused: refuse rather than wipe.
        raise HarnessError(f"no cases under {testdata}; refusing to treat every blob as unused")
    referenced = set(lifecycle.referenced_blobs(testdata))
    store = _store(args)
    items = lifecycle.local_garbage(store, referenced)
    remote = None
    if args.remote:
        remote = require_remote()
        in_use = set(lifecycle.referenced_blobs(testdata, full_cores=True))
        items += lifecycle.remote_garbage(remote, in_use, max_age)
    verb = "would remove" if args.dry_run else "removing"
    _print_garbage(items, verb)
    total = sum(i.size for i in items)
    if args.dry_run:
        print(f"{len(items)} items ({_size(total)}) would be removed (dry run)")
        return 0
    freed = lifecycle.remove(items, remote)
    print(f"removed {len(items)} items ({_size(freed)})")
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("upload", help="push the blobs of cases that the remote store lacks")
    p.add_argument("cases", nargs="*", help="cases: files, arch/name or name")
    flag(p, "all", action="store_true", help="every case under the testdata directory")
    flag(p, "full", action="store_true",
         help="also push the full cores behind skinny cases (their full-ref), from "
              ".cache/full-blobs, so that `reskinny` works on other machines")
    testdata_flag(p)
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("export-module", help="write a blob (core or module) decompressed")
    flag(p, "id", required=True, help="blob id: a case's coredump-ref or a module's ref")
    flag(p, "out", required=True, help="file to write (or a directory: <dir>/<id>)")
    testdata_flag(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("clean", help="remove blobs no case references (local; -remote too)")
    flag(p, "remote", action="store_true",
         help="also delete unreferenced remote blobs older than -age")
    flag(p, "dry-run", dest="dry_run", action="store_true",
         help="list what would be removed and its size")
    flag(p, "age", default=lifecycle.DEFAULT_REMOTE_AGE,
         help="minimum age of remote blobs to delete (default 6mo; e.g. 30d, 12h, 1y)")
    testdata_flag(p)
    p.set_defaults(func=cmd_clean)

