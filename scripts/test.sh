#!/usr/bin/env bash
# Runs the test suite; "no tests ran" (pytest exit 5) is a failure, not a pass.
set -uo pipefail
VENV="${1:-.venv}"
shift || true
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "unifs test: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$rc"
