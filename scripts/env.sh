# Sourced by the README commands: make .venv (once) and install slidesearch into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# torch is installed first and pinned with torchvision: pip takes both from local wheels where they exist.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"
# The page's front-end libraries (OpenSeadragon), pinned by package-lock.json, served from node_modules/.
if command -v npm >/dev/null && [ ! -f node_modules/.package-lock.json -o package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
# Debian's chromium for the page's browser test (Playwright drives it; no browser download), when we may install it.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) >/dev/null \
        || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
# Debian's Orthanc and its DICOMweb plugin: the DICOMweb tests start their own Orthanc on a loopback port.
if ! command -v Orthanc >/dev/null && [ ! -x /usr/sbin/Orthanc ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc orthanc-dicomweb) >/dev/null \
        || echo "warning: could not install orthanc; the DICOMweb tests will be skipped" >&2
fi
export PATH="$PWD/.venv/bin:$PATH"
