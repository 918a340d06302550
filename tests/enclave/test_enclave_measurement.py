"""The code measurement covers the app a node serves, wherever its module lives."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.enclave_app.platform import code_measurement


@pytest.fixture
def app_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "measured_notes.py").write_text("app = None  # the same code\n")
    yield first, second
    sys.modules.pop("measured_notes", None)


def _measure(folder: Path, module: str) -> str:
    sys.path.insert(0, str(folder))
    try:
        return code_measurement(app_module=module)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(module, None)


def test_an_app_outside_the_enclave_packages_changes_the_measurement(
    app_dirs: tuple[Path, Path],
) -> None:
    first, _ = app_dirs
    without_app = code_measurement()
    with_app = _measure(first, "measured_notes")
    assert with_app != without_app
    (first / "measured_notes.py").write_text("app = None  # edited code\n")
    assert _measure(first, "measured_notes") != with_app


def test_the_same_app_code_measures_the_same_wherever_it_is_installed(
    app_dirs: tuple[Path, Path],
) -> None:
    first, second = app_dirs
    assert _measure(first, "measured_notes") == _measure(second, "measured_notes")


def test_a_sample_app_inside_the_enclave_packages_is_measured_with_them() -> None:
    assert code_measurement(app_module="charter.enclave_app.samples.logging") == code_measurement()


def test_an_app_that_cannot_be_found_leaves_the_error_to_loading() -> None:
    assert code_measurement(app_module="no_such_app_module_here") == code_measurement()
