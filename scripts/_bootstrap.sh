# Sourced by scripts/test and scripts/sandbox: create .venv and install Charter with its test
# dependencies when missing or when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHARTER_VENV:-$ROOT/.venv}"
STAMP="$VENV/.charter-installed"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "charter: creating virtual environment in $VENV" >&2
    python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
    echo "charter: installing dependencies (first run only; log in $VENV/install.log)" >&2
    if ! { "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24" &&
           "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"; } >"$VENV/install.log" 2>&1; then
        cat "$VENV/install.log" >&2
        echo "charter: installing dependencies failed (see above)" >&2
        exit 1
    fi
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
