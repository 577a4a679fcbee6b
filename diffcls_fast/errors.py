"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad path, a malformed CSV,
an unknown backend). The CLI prints its message as one line on stderr and exits
non-zero, without a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error caused by user input; its message is a complete one-line explanation."""


class NonFiniteInput(UserError):
    """An input image holding NaN or inf. The engine fails that image (``result.error``), not the run."""


class BackendUnavailable(UserError):
    """A requested backend (or optional dependency) is not installed or cannot run here."""


class DiffclsWarning(UserWarning):
    """Something the user should know but that does not stop the run (e.g. words the tokenizer
    does not know). The CLI prints it as one line on stderr: ``diffcls-fast: warning: ...``."""
