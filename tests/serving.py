"""Run the real uvicorn server on a free 127.0.0.1 port inside a test, in a thread of the test process."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from benchmarks.fixtures.clients import free_port


@contextmanager
def app_client(index, timeout_s: float = 60.0, **options) -> Iterator["object"]:
    """An ``httpx.Client`` on a real server of ``create_app(index, **options)`` (see ``running``)."""
    import httpx

    from retrieval.serve.app import create_app

    with running(create_app(index, **options)) as base, httpx.Client(base_url=base, timeout=timeout_s) as client:
        yield client


def get(client, url: str, status: int = 200, **params):
    """``client.get(url, params=params)``, asserting its status (the body shown when it differs)."""
    response = client.get(url, params=params)
    assert response.status_code == status, response.text
    return response


@contextmanager
def running(app, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 until the block ends; yields the base URL."""
    import uvicorn

    from retrieval.serve.protocol import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, lifespan="off"))  # as `slidesearch serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@contextmanager
def serve_process(index, *options: str, env: dict | None = None, timeout_s: float = 120.0) -> Iterator[tuple[str, object]]:
    """`slidesearch serve INDEX --port P OPTIONS…` in a process of its own (the planted encoder registered), until the
    block ends; yields (base URL, the Popen). Its stderr goes to a file, shown when it does not start."""
    import os
    import subprocess
    import sys
    import tempfile
    import urllib.request
    from pathlib import Path

    from benchmarks.common import subprocess_env

    port = free_port()
    code = ("import sys; from benchmarks.fixtures import planted; from retrieval.cli import main; "
            "sys.argv = ['slidesearch', 'serve'] + sys.argv[1:]; main()")
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-c", code, str(index), "--port", str(port), *options],
                               stdout=log, stderr=log, env=subprocess_env(**(env or {})))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with urllib.request.urlopen(base + "/api/health", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start: {log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.2)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


LAB_REPORTS = {
    "S01": "Adenocarcinoma with fibrous stroma. No necrosis identified.",
    "S03": "Extensive tumour necrosis is present. Stroma is desmoplastic.",
    "S04": "Necrosis and lymphocytes; negative for mucin.",
    "S05": "Mucinous carcinoma: pools of extracellular mucin.",
    "S07": "Dense lymphoid infiltrate with mature fat.",
}
LAB_STAINS = {"S02": "IHC", "S04": "IHC", "S06": "IHC", "S08": "IHC"}  # each patient (case): one H&E, one IHC slide


def make_lab_index(planted_index: tuple, root) -> object:
    """A copy of the planted index under ``root`` with stains (two per case) and reports for five slides, added by
    `slidesearch metadata INDEX stains.csv --reports FOLDER`; returns the index path."""
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from retrieval.cli import app

    root = Path(root)
    shutil.copytree(planted_index[0], root / "idx")
    folder = root / "reports"
    folder.mkdir()
    for slide_id, text in LAB_REPORTS.items():
        (folder / f"{slide_id}.txt").write_text(text)
    table = root / "stains.csv"
    table.write_text("slide_id,stain\n" + "".join(f"S0{i},{LAB_STAINS.get(f'S0{i}', 'H&E')}\n" for i in range(1, 9)))
    result = CliRunner().invoke(app, ["metadata", str(root / "idx"), str(table), "--reports", str(folder)])
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return root / "idx"


