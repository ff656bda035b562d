"""CPython: layout facts per version (facts.py), the agent's view of a build in a
process (layout.py) and the names of its frames (code.py)."""

from .code import CodeReader
from .layout import PythonLayout, python_layout, python_layouts

__all__ = ["CodeReader", "PythonLayout", "python_layout", "python_layouts"]
