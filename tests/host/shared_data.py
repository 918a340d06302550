"""Where the shared test data lives: `shared/` beside the repository (the CI layout), else
the workplace's /work/shared. (tests/client has the same module: test directories are
import roots of their own, and `tests/` itself must not be one — its subdirectories share
our packages' names.)"""

from __future__ import annotations

from pathlib import Path

_BESIDE_REPO = Path(__file__).resolve().parents[2].parent / "shared"
SHARED = _BESIDE_REPO if _BESIDE_REPO.is_dir() else Path("/work/shared")
CCF_LEDGERS = SHARED / "ccf-ledgers"
