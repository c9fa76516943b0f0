#!/usr/bin/env bash
# Installs what unifs needs on a fresh Debian machine: FUSE from apt, Python
# packages into a virtual environment. Safe to run again.
# Usage: setup.sh [VENV] [test|demo]; demo installs only what `unifs demo` needs.
set -euo pipefail
VENV="${1:-.venv}"
WHAT="${2:-test}"

need_apt=()
command -v fusermount >/dev/null 2>&1 || need_apt+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse.so.2' || need_apt+=(libfuse2)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "$WHAT" = test ]; then
    command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)   # Azurite, the Azure emulator
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "unifs setup: please install: ${need_apt[*]} (needs root and apt-get)" >&2
        exit 1
    fi
    echo "unifs setup: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
echo "unifs setup: pip install -e '.[$WHAT]' into $VENV"
"$VENV/bin/python" -m pip install -q -e ".[$WHAT]"
if [ "$WHAT" = test ]; then
    bash "$(dirname "$0")/install-emulators.sh"
fi
