"""What every benchmark shares: where a figure comes from, the machine, the assumed GPU rate, and its result files.

Provenance: the command, the commit (and whether the tree had changes), the machine and its load. Every
benchmark that writes Markdown starts it with :func:`header`; ``python -m benchmarks.common [--json]`` prints
the same facts (``reproduce.sh`` heads each section with them). :func:`kept` makes a reused ``--keep`` folder
loud: it names the commit that wrote it. :func:`gpu_encoder_rate` is the encoder rate that encoder-dependent
targets are judged at. :func:`write_outputs` / :func:`save_result` write ``bench_*.json`` and ``.md``.
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

ASSUMED_GPU_PATCHES_PER_S = 1500.0
ASSUMED_SOURCE = ("assumed: a ViT-B/16-class encoder in bf16 on one data-centre GPU (the cluster plan's figure, "
                  "benchmarks/ray_engine.py); no GPU measurement yet")


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


def read_lines(path: str) -> list[str]:
    """The lines of a text file such as ``/proc/meminfo``; none when it cannot be read."""
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform

    return next((line.split(":", 1)[1].strip() for line in read_lines("/proc/cpuinfo")
                 if line.startswith("model name")), platform.processor() or platform.machine() or "unknown CPU")


def machine_description() -> str:
    """CPU model, core count, FAISS threads and GPUs, in one line."""
    import faiss

    return (f"{cpu_model()}, {os.cpu_count()} cores, FAISS {faiss.__version__} with {faiss.omp_get_max_threads()} "
            f"threads, {faiss.get_num_gpus()} GPU(s)")


def machine() -> str:
    """:func:`machine_description`, the memory, and the NVIDIA driver's GPUs."""
    from indexer.models.devices import system_gpus

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = system_gpus()
    return f"{machine_description()}, {memory:.0f} GiB" + (f", {', '.join(gpus)}" if gpus else "")


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """The facts of this run of ``script`` (``benchmarks/NAME.py``, run as ``python -m benchmarks.NAME``) with ``argv``."""
    args = sys.argv[1:] if argv is None else argv
    module = script.removesuffix(".py").replace("/", ".")
    return {"command": " ".join(["python", "-m", module, *map(shlex.quote, args)]), "commit": commit(),
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


def save_result(result: dict, out: Path, stem: str, markdown) -> dict:
    """Write ``stem``.json and ``stem``.md (``markdown(result)``, ``stem`` = ``bench_…``) into ``out``, print the
    Markdown; returns ``result``."""
    write_outputs(out, stem.removeprefix("bench_"), result, markdown(result))
    return result


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


def gpu_encoder_rate(report: str | Path | None = None) -> tuple[float, str]:
    """(patches/s, where the figure comes from): the best ViT-B/16 bf16 rate of a benchmarks/gpu.py report
    (``--gpu-report out/gpu/bench_gpu.json``), else the assumed 1,500 patches/s (no GPU measured yet)."""
    if report is None:
        return ASSUMED_GPU_PATCHES_PER_S, ASSUMED_SOURCE
    data = json.loads(Path(report).read_text())
    rows = [r for r in data["encode"] if r["model"] == "ViT-B/16" and r["precision"] == "bf16"]
    if not rows:
        raise ValueError(f"{report}: no ViT-B/16 bf16 encoder rows")
    best = max(rows, key=lambda r: r["patches_per_s"])
    return float(best["patches_per_s"]), (f"measured by benchmarks/gpu.py on {data['provenance']['machine']} "
                                          f"(ViT-B/16 bf16, batch {best['batch_size']})")


def subprocess_env(code: str | Path = ROOT, **extra: str) -> dict[str, str]:
    """The environment for a child Python that must import ``code``'s checkout first (its ``indexer``,
    ``retrieval`` and ``benchmarks``): ``PYTHONPATH`` leads with it."""
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path} | extra


if __name__ == "__main__":
    facts = {"commit": commit(), "machine": machine(), "load_avg_1min": round(os.getloadavg()[0], 2),
             "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print(json.dumps(facts) if sys.argv[1:] == ["--json"] else
          f"Commit `{facts['commit']}`, {facts['date']}; machine: {facts['machine']}.")
