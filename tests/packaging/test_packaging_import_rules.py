"""Each package's `__init__.py` says what it is and what it may import, and its modules keep
to that (DESIGN §2), checked by parsing every import with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# folder → (its import name, the charter packages it may import besides itself)
PACKAGES: dict[str, tuple[str, frozenset[str]]] = {
    "ledger": ("charter.ledger", frozenset()),
    "consensus": ("charter.consensus", frozenset()),
    "governance": ("charter.governance", frozenset({"charter.ledger"})),
    "enclave_app": (
        "charter.enclave_app",
        frozenset({"charter.ledger", "charter.consensus", "charter.governance"}),
    ),
    "host": ("charter.host", frozenset({"charter.ledger", "charter.enclave_app.interface"})),
    "client": ("charter", frozenset({"charter.ledger", "charter.governance"})),
}
# The boundary module may use only the limits of ledger and consensus, nothing of the enclave.
INTERFACE_MAY_IMPORT = frozenset({"charter.ledger", "charter.consensus"})
CHARTER_PACKAGES = tuple(name for name, _ in PACKAGES.values() if name != "charter")


def _charter_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("charter")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("charter")
        ):
            # `from charter.x import y` may name a module y: count it as charter.x.y too.
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _allowed(name: str, own: str, may: frozenset[str]) -> bool:
    def under(prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    if own != "charter" and under(own):
        return True
    if own == "charter" and not any(under(p) for p in CHARTER_PACKAGES):
        return True  # the client's own modules: charter.sdk, charter.cli, ...
    return any(under(p) for p in may)


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_each_package_imports_only_what_its_docstring_allows(folder: str) -> None:
    own, may = PACKAGES[folder]
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        in_interface = rel.startswith("enclave_app/interface/")
        for line, name in _charter_imports(path):
            if in_interface:
                ok = name.startswith("charter.enclave_app.interface") or any(
                    name == p or name.startswith(p + ".") for p in INTERFACE_MAY_IMPORT
                )
            else:
                ok = _allowed(name, own, may)
            if not ok:
                offenders.append(f"{rel}:{line} imports {name}")
    assert offenders == []


@pytest.mark.parametrize(
    "init",
    sorted(
        p.relative_to(ROOT).as_posix()
        for folder in PACKAGES
        for p in (ROOT / folder).rglob("__init__.py")
    ),
)
def test_every_package_docstring_says_what_it_is_and_what_it_may_import(init: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / init).read_text()))
    assert doc is not None and doc != "Charter package."
    assert "May import:" in doc or "Imports nothing of ours" in doc
