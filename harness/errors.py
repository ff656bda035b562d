"""Exception types. Every error a user can cause (bad input) is a HarnessError with a
message that says what was wrong and, where possible, what to do about it. The CLI
prints it as one line and exits 2; anything else is a bug and keeps its traceback."""


class HarnessError(Exception):
    """Base of all errors reported to the user without a traceback."""


class ConfigError(HarnessError):
    """The project's settings ([tool.coredump] in pyproject.toml, environment) are invalid."""


class CoreError(HarnessError):
    """A core file is not a core, is truncated, or is of an unsupported kind."""


class ModuleError(HarnessError):
    """A module file (an executable or shared object) cannot be used."""


class StoreError(HarnessError):
    """A blob is missing, corrupt, or cannot be written."""


class CaseError(HarnessError):
    """A test-case JSON file is malformed."""


class UnwindDataError(HarnessError):
    """A module's unwind data could not be read at all."""


class BuildError(HarnessError):
    """The unwinder could not be compiled, or the compiled object disagrees with Python."""


class UnsafePathError(HarnessError):
    """A path from a case or a core would lead outside the directory it must stay in."""
