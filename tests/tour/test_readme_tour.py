"""The README's five-minute tour, run verbatim against a real sandbox network."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charter.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def tour_script() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- tour -->\n```bash\n(.*?)```", readme, re.S)
    assert found, "README.md has no tour block"
    return found.group(1)


def test_readme_tour_commands_work_verbatim_against_a_sandbox(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "workspace" / "sandbox", nodes=3, election_timeout_ms=(500, 1000))
    try:
        asyncio.run(sandbox.start())
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + tour_script()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # Each step's outcome, as the README promises it.
        assert "Accepted" in output, "the proposal admitting user1 was not accepted"
        assert '{"msg":"a private hello"}' in output, "user1 could not read its private record"
        assert "is valid for service cert" in output, "the receipt did not verify offline"
        receipt = tmp_path / "receipt.json"
        assert receipt.exists()
        assert "error" not in output.lower().split("ledger read")[0].split("audit")[-1]
        ledger_read = output[output.index("1.1 ") :] if "1.1 " in output else ""
        assert "public:ccf.gov.service.info" in ledger_read, "ledger read shows no governance"
    finally:
        sandbox.stop()
