"""Installing Charter adds one top-level import name, `charter`, and nothing else.

The repository keeps its folders (`ledger/`, `client/`, ...); the wheel maps them under
`charter` so a user's own `client` or `ledger` module is never shadowed.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _site_packages(env_dir: Path) -> Path:
    found = sorted(env_dir.glob("lib/python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.timeout(240)
def test_a_fresh_environment_with_the_wheel_installed_has_only_the_charter_package(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("charter-*.whl")

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    site = _site_packages(env_dir)
    before = {path.name for path in site.iterdir()}
    subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    added = {path.name for path in site.iterdir()} - before
    top_level = {name for name in added if not name.endswith(".dist-info")}
    assert top_level == {"charter"}, top_level

    # The mapped folders are there under their new names, and the old names are not.
    installed = site / "charter"
    for package in ("ledger", "consensus", "governance", "enclave_app", "host"):
        assert (installed / package / "__init__.py").is_file(), package
    assert (installed / "sdk.py").is_file()
    assert (installed / "enclave_app" / "samples" / "logging.py").is_file()
    # Every entry point imports from the installed wheel alone (its dependencies are taken
    # from this environment's site-packages, read as a plain path: no editable-install hook),
    # and the old top-level names are not importable there.
    ours = _site_packages(Path(sys.prefix))
    probe = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import importlib.util as u, charter.sdk, charter.cli, charter.host.main, "
            "charter.enclave_app.main, charter.ledger.audit; "
            "print(charter.sdk.__file__); print(u.find_spec('ledger'), u.find_spec('client'))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ours), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr
    sdk_file, missing = probe.stdout.splitlines()
    assert Path(sdk_file).is_relative_to(installed), sdk_file
    assert missing == "None None"
