"""Assertions shared by the CLI tests."""

from __future__ import annotations


def one_error_line(result) -> str:
    """The single ``error: …`` line a refused command printed on stderr (no traceback anywhere)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]
