"""Build hook (the rest of the package is in pyproject.toml): a built wheel carries the page's viewer.

The page's OpenSeadragon comes from npm, pinned by package-lock.json. A non-editable build copies its build
(minified script, button images, licence) into ``retrieval/serve/vendor/openseadragon`` of the wheel, running
``npm ci`` first when ``node_modules`` lacks the pinned version; it is never committed. An editable install
serves the checkout's ``node_modules`` instead (``retrieval.serve.app.viewer_folder``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGE = "openseadragon"
VIEWER = Path("retrieval", "serve", "vendor", PACKAGE)  # where retrieval.serve.app looks for it in an install


def pinned_version() -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{PACKAGE}"]["version"]


def installed_version() -> str | None:
    try:
        return json.loads((ROOT / "node_modules" / PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def viewer_build() -> Path:
    """node_modules' OpenSeadragon build at the lock file's version, installed by `npm ci` when it is not there."""
    if installed_version() != pinned_version():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(f"building slidesearch needs OpenSeadragon {pinned_version()} from npm: install npm (Node.js) "
                             "or run `npm ci` in the source tree first")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT, check=True)
    build = ROOT / "node_modules" / PACKAGE / "build" / PACKAGE
    if not (build / f"{PACKAGE}.min.js").is_file() or installed_version() != pinned_version():
        raise SystemExit(f"npm ci did not install OpenSeadragon {pinned_version()} into {build}")
    return build


class BuildPyWithViewer(build_py):
    """``build_py`` that also puts the pinned OpenSeadragon build into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / VIEWER
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(viewer_build(), target, ignore=shutil.ignore_patterns("*.map", "openseadragon.js"))
        shutil.copy2(ROOT / "node_modules" / PACKAGE / "LICENSE.txt", target / "LICENSE.txt")  # BSD-3: keep the notice


setup(cmdclass={"build_py": BuildPyWithViewer})
