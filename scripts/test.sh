#!/usr/bin/env bash
# Install into .venv (first run only) and run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
