"""The harness promise behind every end-to-end test: node processes run (and measure) the frozen
copy of the code taken when the session started, not the working tree that engineers keep
editing. Otherwise an edit during a run changes a restarted node's measurement, and it can no
longer unseal its own state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import REPO_ROOT

pytestmark = pytest.mark.e2e

_WHERE = """
import json
import charter, charter.enclave_app.main, charter.host.main, charter.ledger, charter.sandbox
from charter.enclave_app.platform import code_measurement
print(json.dumps({
    "files": [m.__file__ for m in (charter, charter.enclave_app.main, charter.host.main,
                                   charter.ledger, charter.sandbox)],
    "measurement": code_measurement(),
}))
"""


def test_node_processes_import_and_measure_the_frozen_copy(node_code: Path) -> None:
    from charter.enclave_app.platform import code_measurement

    # As NodeProcess starts a host, and the host its enclave: a new interpreter, this
    # environment, the repository as working directory.
    proc = subprocess.run(
        [sys.executable, "-c", _WHERE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    outside = [f for f in seen["files"] if not Path(f).resolve().is_relative_to(node_code)]
    assert not outside, f"imported from outside the frozen copy {node_code}: {outside}"
    assert seen["measurement"] == code_measurement(node_code / "charter")
