"""Run the real uvicorn server on a free 127.0.0.1 port inside a test, in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``, or its peak ``VmHWM``) in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


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

    port = free_port()
    tests = str(Path(__file__).resolve().parent)
    code = (f"import sys; sys.path.insert(0, {tests!r}); import planted; from retrieval.cli import main; "
            f"sys.argv = ['slidesearch', 'serve'] + sys.argv[1:]; main()")
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-c", code, str(index), "--port", str(port), *options],
                               stdout=log, stderr=log, env={**os.environ, **(env or {})})
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


def multipart(data: bytes, name: str = "patch.png") -> tuple[bytes, dict]:
    """A multipart/form-data body with ``data`` as the ``image`` field, and its Content-Type header."""
    boundary = "slidesearch-upload-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def flood_images(side: int = 5792) -> tuple[bytes, bytes]:
    """A ``side``²-px JPEG (33.5 MP and ~17 MB by default: textured, as a scanned field) and a PNG of the same size and
    ~100 kB (a decompression bomb within the pixel limit: decoding it holds all its pixels)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (side // 4, side // 4, 3), dtype=np.uint8)).resize((side, side))
    noisy = np.asarray(coarse).astype(np.int16) + rng.integers(-40, 40, (side, side, 3), dtype=np.int16)
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(jpeg, "JPEG", quality=82)
    Image.new("RGB", (side, side), (210, 120, 170)).save(png, "PNG")
    return jpeg.getvalue(), png.getvalue()
