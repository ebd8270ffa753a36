#!/usr/bin/env bash
# Install into .venv (first run only), then run the end-to-end demo.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
slidesearch demo --model tiny "$@"
