"""The shared typer app and the one-line error handling every command uses."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import typer

from indexer.errors import UserError

app = typer.Typer(
    name="slidesearch",
    help="Slide retrieval and vector search for computational pathology.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


DICOMWEB_TOKEN_OPTION = typer.Option(
    None, "--dicomweb-token-file", envvar="SLIDESEARCH_DICOMWEB_TOKEN_FILE", dir_okay=False,
    help="A file holding the bearer token for DICOMweb slides (sent on every request; never stored in the index).")


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors, failures of the file system and interrupts into one stderr line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc), exc.exit_code)
        except OSError as exc:  # disk full, permission denied, a name too long: never a traceback
            where = f": {str(exc.filename)[:200]}" if exc.filename else ""
            reason = os.strerror(exc.errno) if exc.errno else str(exc.strerror or exc).strip()  # pyarrow's add detail
            fail(f"{reason.splitlines()[0] if reason else type(exc).__name__}{where} "
                 "(an index keeps its last committed version)")
        except MemoryError:
            fail("out of memory (an index keeps its last committed version)")
        except KeyboardInterrupt:
            fail("interrupted; re-run the same command to resume (an index keeps its last committed version)", 130)

    return wrapper


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON on stdout (numpy scalars and paths converted)."""
    from retrieval.query.results import dumps

    sys.stdout.write(dumps(obj, indent=2) + "\n")
