"""`pip install .` (a wheel, not editable) into a fresh virtual environment serves the whole page with its viewer:
the build hook (setup.py) puts the OpenSeadragon build pinned by package-lock.json into the wheel. Offline: the
wheel is built without build isolation and installed without dependencies (the new venv sees this one's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from benchmarks.fixtures.clients import free_port

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_SKIPS = {".git", ".venv", "build", "out", "demo-out", "slidesearch.egg-info", ".pytest_cache"}


def skipped(folder: str, names: list[str]) -> set[str]:
    """What the copy of the checkout leaves out: its outputs at the top, caches anywhere."""
    top = TOP_LEVEL_SKIPS if Path(folder) == ROOT else set()
    return {n for n in names if n in top or n == "__pycache__" or (Path(folder).name == "serve" and n == "vendor")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (ROOT / "node_modules" / "openseadragon" / "package.json").is_file():
        pytest.skip("no node_modules/openseadragon: run `npm ci` (scripts/env.sh does); the build would need the network")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=skipped, symlinks=True)  # a clean copy: the build writes build/ beside setup.py
    out = work / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    return next(out.glob("slidesearch-*.whl"))


def test_the_wheel_carries_the_pinned_viewer_and_the_page(wheel):
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/openseadragon"]["version"]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        script = zf.read("retrieval/serve/vendor/openseadragon/openseadragon.min.js").decode("utf-8", "replace")
    assert f"OpenSeadragon {lock}" in script[:2000] or f"Version {lock}" in script[:2000] or lock in script[:2000]
    assert {"retrieval/serve/vendor/openseadragon/LICENSE.txt", "retrieval/serve/vendor/openseadragon/images/home_rest.png",
            "retrieval/serve/static/index.html", "retrieval/serve/static/app.js", "retrieval/serve/static/api.js",
            "retrieval/serve/static/cards.js", "retrieval/serve/static/style.css"} <= names
    assert not any(n.endswith(".map") for n in names)
    assert not (ROOT / "retrieval" / "serve" / "vendor").exists()  # built into the wheel, never into the source tree


def dependency_paths() -> list[str]:
    """This interpreter's site-packages folders (where the wheel's dependencies are), not the checkout."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def test_a_wheel_install_serves_the_page_with_the_viewer(wheel, planted_index, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text("\n".join(dependency_paths()) + "\n")
    where = subprocess.run([str(python), "-c", "import retrieval.serve.app as a; print(a.__file__); print(a.viewer_folder())"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    module, viewer = where.stdout.split()
    assert module.startswith(str(venv)) and viewer.startswith(str(site)), where.stdout  # not the checkout's node_modules

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(venv / "bin" / "slidesearch"), "serve", str(planted_index[0]), "--port", str(port)],
                              cwd=tmp_path, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                subprocess.run(["sleep", "0.2"])
        page = urllib.request.urlopen(base + "/").read().decode()
        assert "/vendor/openseadragon/openseadragon.min.js" in page and "/static/app.js" in page
        for path, kind in (("/vendor/openseadragon/openseadragon.min.js", "javascript"), ("/static/app.js", "javascript"),
                           ("/static/cards.js", "javascript"), ("/static/api.js", "javascript"), ("/static/style.css", "css"),
                           ("/vendor/openseadragon/images/home_rest.png", "image/png"),
                           ("/api/slides/S01/image.dzi", "xml"), ("/api/slides/S01/image_files/11/0_0.jpeg", "image/jpeg")):
            with urllib.request.urlopen(base + path) as response:
                assert response.status == 200 and kind in response.headers["content-type"], path
        assert "OpenSeadragon is missing" not in (tmp_path / "serve.log").read_text()
    finally:
        server.terminate()
        server.wait(30)
        log.close()
