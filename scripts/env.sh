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
export PATH="$PWD/.venv/bin:$PATH"
