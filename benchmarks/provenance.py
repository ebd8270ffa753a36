"""Where a figure comes from: the command, the commit (and whether the tree had changes), the machine and its load.

Every benchmark that writes Markdown starts it with :func:`header`; ``python benchmarks/provenance.py`` prints
the same facts (``reproduce.sh`` heads each section with them). :func:`kept` makes a reused ``--keep`` folder
loud: it names the commit that wrote it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = "written_by.json"  # in a kept folder: the commit that wrote it


def commit() -> str:
    """Short hash of HEAD, with ``+changes`` when the work tree differs from it ("unknown" outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def machine() -> str:
    """CPU model, cores, FAISS threads and GPUs (``machine_description``), memory, and the NVIDIA driver's GPUs."""
    from indexer.models.devices import system_gpus
    from retrieval.bench_search import machine_description

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = system_gpus()
    return f"{machine_description()}, {memory:.0f} GiB" + (f", {', '.join(gpus)}" if gpus else "")


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """The facts of this run of ``script`` (a path relative to the repository) with ``argv``."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": " ".join(["python", script, *map(shlex.quote, args)]), "commit": commit(),
            "machine": machine(), "load_avg_1min": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def header(facts: dict) -> str:
    """Markdown lines naming the command, commit, machine, load and date of ``facts``."""
    return (f"Command: `{facts['command']}`  \nCommit `{facts['commit']}`, {facts['date']}; machine: "
            f"{facts['machine']}; 1-min load average at the start {facts['load_avg_1min']}.\n")


def write_outputs(out: Path | None, stem: str, result: dict, text: str) -> None:
    """Print the Markdown ``text``; with ``out``, also write ``bench_<stem>.json`` (``result``) and ``.md`` there."""
    print(text)
    if out is None:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"bench_{stem}.md").write_text(text)


def kept(folder: Path) -> str | None:
    """For a ``--keep`` folder: None when it is new (it is stamped with this commit), else a warning line naming
    the commit that wrote it (printed on stderr, and to be shown with the figures)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / STAMP
    if not stamp.is_file():
        stamp.write_text(json.dumps({"commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}) + "\n")
        return None
    old = json.loads(stamp.read_text())
    now = commit()
    line = (f"reusing indexes in {folder} written at commit {old['commit']} ({old['date']})"
            + ("" if old["commit"] == now else f", NOT the current {now}: their figures pair this code with old "
               "indexes; delete the folder for a fresh run"))
    print(f"warning: {line}", file=sys.stderr)
    return line


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    facts = {"commit": commit(), "machine": machine(), "load_avg_1min": round(os.getloadavg()[0], 2),
             "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print(json.dumps(facts) if sys.argv[1:] == ["--json"] else
          f"Commit `{facts['commit']}`, {facts['date']}; machine: {facts['machine']}.")
