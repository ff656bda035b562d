"""What the agent fills: an unwinder's maps by name and the layout they are
declared with. Its own module so that the agent and the interpreter agent share
it without importing each other."""

from __future__ import annotations

from typing import Protocol

from ..helpers import BpfMap
from .debuginfo import ObjectLayout


class MapBackend(Protocol):
    """What the agent needs of an unwinder: its maps by name, the layout they
    are declared with, and a reset. The host build (bridge.Unwinder, emulated
    maps) and the kernel build (kernel.KernelUnwinder, kernel maps) both are one."""

    @property
    def maps(self) -> dict[str, BpfMap]: ...

    @property
    def layout(self) -> ObjectLayout: ...

    def reset(self) -> None: ...
