"""Exception types. Every error a user can cause (bad input) is a HarnessError with a
message that says what was wrong and, where possible, what to do about it."""


class HarnessError(Exception):
    """Base of all errors reported to the user without a traceback."""


class CoreError(HarnessError):
    """A core file is not a core, is truncated, or is of an unsupported kind."""


class StoreError(HarnessError):
    """A blob is missing, corrupt, or cannot be written."""


class CaseError(HarnessError):
    """A test-case JSON file is malformed."""


class UnwindDataError(HarnessError):
    """A module's unwind data could not be read at all."""


class BuildError(HarnessError):
    """The unwinder shared object could not be compiled."""
