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
    echo "charter: installing dependencies (first run only)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24" >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]" >&2
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
