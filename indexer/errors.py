"""Errors whose message is shown to the user as one line (no traceback)."""


class UserError(Exception):
    """Bad input or a bad request; the message alone is shown to the user.

    The CLI prints ``error: <message>`` on stderr and exits with ``exit_code``.
    """

    exit_code = 2


class SlideError(UserError):
    """A slide cannot be opened, has no usable MPP, or cannot be read."""


class ModelError(UserError):
    """An encoder name, checkpoint or optional dependency is wrong or missing."""


class IndexError_(UserError):
    """An index directory is missing, corrupt or incompatible with the request."""


class QueryError(UserError):
    """A query, filter expression or region is malformed."""


class LimitError(QueryError):
    """A query input is over a size limit (bytes or pixels); the HTTP API answers 413."""


class DeviceError(UserError):
    """A device was asked for, or a GPU is present, but cannot be used (never a silent fallback to the CPU)."""


def failure_reason(exc: BaseException) -> str:
    """Why a slide failed, in one line: a UserError's message, else the exception's type and first line."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "ran out of memory reading this slide (is it a decompression bomb?)"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"
