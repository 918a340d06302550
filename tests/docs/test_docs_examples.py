"""The user documentation in docs/ stays true to the code.

- The Python blocks of app-developer-guide.md marked `<!-- test -->` form one module that is
  imported and whose `test_*` functions are run, so the guide's example app and its test work.
- Every governance action the member guide names exists in `governance.actions.ACTIONS`, every
  action has a section there, and every JSON example of an action validates against its
  argument model (as `charter propose` checks it before signing).
- Every `NodeConfig` field (nested ones as dotted paths) has a row in the operator guide's
  config reference, every row names a real field, and the defaults it quotes are the code's.
- Every flag shown after a `charter …` command in any page is an option of that command.
- The auditor guide's consistency-proof functions and its CCF verification snippet run on
  a generated ledger and its receipts.
- Every error code quoted with its status (`503 FrontendNotOpen`) is one the code sends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import typer

from charter.cli import app as cli_app
from charter.enclave_app.interface import NodeConfig
from charter.governance.actions import ACTIONS, parse_action
from charter.governance.constitution import parse_constitution
from charter.ledger import receipt
from charter.ledger.errors import VerificationError
from charter.ledger.generate import generate_ledger

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = (
    "index.md",
    "concepts.md",
    "operator-guide.md",
    "member-guide.md",
    "app-developer-guide.md",
    "auditor-guide.md",
    "security-model.md",
    "console.md",
)

_RUNNABLE = re.compile(r"<!-- test -->[ \t]*\n```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_ACTION_HEADING = re.compile(r"^### `([a-z_]+)`", re.MULTILINE)
# Backticked words shaped like action names (verb_object): each must be a real action.
_ACTION_LIKE = re.compile(r"`((?:set|remove|add|transition|trigger)_[a-z_]+)`")
_CONFIG_ROW = re.compile(r"^\| `([a-z_.\[\]]+)` \|([^|]*)\|([^|]*)\|", re.MULTILINE)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
# Backticked dotted paths into the nested config sections, e.g. `signatures.tx_count`.
_CONFIG_PATH = re.compile(r"`((?:signatures|snapshots|consensus|start)\.[a-z_.\[\]]+)`")


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next `## `)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


# ------------------------------------------------------------------------- runnable examples


def test_every_page_of_the_map_exists_and_index_links_them_all() -> None:
    index = read("index.md")
    for page in PAGES:
        assert (DOCS / page).is_file(), page
        if page != "index.md":
            assert f"({page})" in index, f"index.md does not link {page}"


@contextlib.contextmanager
def runnable_module(page: str, tmp_path: Path) -> Iterator[types.ModuleType]:
    """The page's `<!-- test -->` Python blocks, in order, imported as one module."""
    blocks = _RUNNABLE.findall(read(page))
    assert blocks, f"{page} has no block marked <!-- test -->"
    name = "docs_" + page.removesuffix(".md").replace("-", "_")
    path = tmp_path / f"{name}.py"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs: pydantic resolves the models' annotations through it.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_app_developer_guide_example_app_passes_its_example_tests(tmp_path: Path) -> None:
    with runnable_module("app-developer-guide.md", tmp_path) as module:
        tests = [
            fn
            for name, fn in vars(module).items()
            if name.startswith("test_") and isinstance(fn, types.FunctionType)
        ]
        assert len(tests) >= 2, "the example test checks more than one promise"
        for fn in tests:
            fn()


def test_auditor_guide_consistency_check_accepts_real_prefixes_and_rejects_forks(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ledger"
    generate_ledger(str(directory), transactions=260, signature_interval=50, seed=7)
    with runnable_module("auditor-guide.md", tmp_path) as guide:
        roots = guide.signed_roots(str(directory))
        tree = guide.ledger_tree(str(directory))
        seqnos = sorted(roots)
        assert len(seqnos) >= 5
        for old, new in itertools.pairwise(seqnos):
            proof = tree.consistency_proof(old, new)
            guide.check_roots_consistent((old, roots[old]), (new, roots[new]), proof)
        old, new = seqnos[1], seqnos[-1]
        proof = tree.consistency_proof(old, new)
        forged = bytes(32)
        with pytest.raises(VerificationError):
            guide.check_roots_consistent((old, forged), (new, roots[new]), proof)


def _python_blocks_after(page: str, heading: str) -> list[str]:
    return [
        body
        for language, body in _FENCE.findall(section(read(page), heading))
        if language == "python"
    ]


def test_auditor_guide_ccf_verification_snippet_accepts_charter_receipts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = generate_ledger(str(tmp_path / "ledger"), transactions=120, signature_interval=50)
    # An ordinary transaction without claims: the snippet expects an all-zero claims digest.
    seqno = next(
        s
        for s in range(2, ledger.last_seqno)
        if not ledger.history.is_signature(s)
        and ledger.history.leaf_components(s)[2] == bytes(32)
        and ledger.history.receipt_material(s) is not None
    )
    material = ledger.history.receipt_material(seqno)
    assert material is not None
    proof, signature = material
    wsd, evidence, claims = ledger.history.leaf_components(seqno)
    assert evidence is not None
    json_receipt = receipt.build_json_receipt(
        node_cert_pem=signature.node_cert_pem or ledger.node_cert_pem,
        node_id=signature.node_id,
        signature=signature.signature,
        proof=proof,
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
    )
    cose_receipt = receipt.build_cose_receipt(
        signature.cose_sign1,
        write_set_digest=wsd,
        commit_evidence=evidence,
        claims_digest=claims,
        proof=proof,
    )
    (tmp_path / "service_cert.pem").write_text(ledger.service_cert_pem)
    (tmp_path / "r.json").write_text(json.dumps(json_receipt))
    (tmp_path / "r.cose").write_bytes(cose_receipt)
    (snippet,) = _python_blocks_after("auditor-guide.md", "Receipts")[-1:]
    assert "ccf.receipt" in snippet and "ccf.cose" in snippet
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "auditor-guide.md", "exec"), {"__name__": "docs_ccf_snippet"})


# ------------------------------------------------------------------------- governance actions


def test_member_guide_has_one_section_per_governance_action() -> None:
    actions_section = section(read("member-guide.md"), "Governance actions")
    headings = _ACTION_HEADING.findall(actions_section)
    assert len(headings) == len(set(headings)), "an action is documented twice"
    assert set(headings) == set(ACTIONS), {
        "undocumented": sorted(set(ACTIONS) - set(headings)),
        "not actions": sorted(set(headings) - set(ACTIONS)),
    }


def test_every_action_name_the_docs_mention_exists() -> None:
    for page in PAGES:
        text = read(page)
        named = set(_ACTION_LIKE.findall(text))
        for doc in _json_blocks(text):
            if _is_proposal(doc):
                named |= {action["name"] for action in doc["actions"]}
        assert named <= set(ACTIONS), f"{page}: not actions: {sorted(named - set(ACTIONS))}"
    assert set(_ACTION_LIKE.findall(read("member-guide.md"))) == set(ACTIONS)


def _json_blocks(text: str) -> Iterator[Any]:
    for language, body in _FENCE.findall(text):
        if language == "json":
            yield json.loads(body)


def _is_proposal(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("actions"), list)


def test_every_action_example_in_the_member_guide_validates() -> None:
    examples: dict[str, int] = {}
    for doc in _json_blocks(read("member-guide.md")):
        if _is_proposal(doc):
            for action in doc["actions"]:
                parse_action(action["name"], action.get("args"))
                examples[action["name"]] = examples.get(action["name"], 0) + 1
    assert set(examples) == set(ACTIONS), sorted(set(ACTIONS) - set(examples))


def test_constitution_examples_in_the_member_guide_are_valid_constitutions() -> None:
    found = 0
    for doc in _json_blocks(read("member-guide.md")):
        if _is_proposal(doc):
            for action in doc["actions"]:
                if action["name"] == "set_constitution":
                    parse_constitution(action["args"]["constitution"])
                    found += 1
        elif isinstance(doc, dict) and ("default" in doc or "actions" in doc):
            parse_constitution(doc)
            found += 1
    assert found >= 2


# ------------------------------------------------------------------------- node config


def _submodels(annotation: Any) -> Iterator[tuple[str, type[pydantic.BaseModel]]]:
    """("" | "[]", model) for each pydantic model inside a field's annotation."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield "", annotation
        return
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        for suffix, model in _submodels(arg):
            yield ("[]" if origin is list else suffix), model


def config_fields(
    model: type[pydantic.BaseModel], prefix: str = ""
) -> Iterator[tuple[str, pydantic.fields.FieldInfo]]:
    for name, info in model.model_fields.items():
        path = prefix + name
        yield path, info
        for suffix, sub in _submodels(info.annotation):
            yield from config_fields(sub, f"{path}{suffix}.")


def _config_rows() -> dict[str, tuple[str, str]]:
    reference = section(read("operator-guide.md"), "Config reference")
    rows = {
        path: (kind.strip(), default.strip())
        for path, kind, default in _CONFIG_ROW.findall(reference)
    }
    assert rows, "the config reference is a table of | `field` | type | default | meaning |"
    return rows


def test_operator_guide_config_reference_lists_exactly_the_node_config_fields() -> None:
    fields = {path for path, _ in config_fields(NodeConfig)}
    rows = set(_config_rows())
    assert fields <= rows, f"undocumented config fields: {sorted(fields - rows)}"
    assert rows <= fields, f"documented fields that do not exist: {sorted(rows - fields)}"


def test_config_fields_named_on_any_page_exist() -> None:
    fields = {path for path, _ in config_fields(NodeConfig)}
    named = 0
    for page in PAGES:
        for token in _CONFIG_PATH.findall(read(page)):
            assert token in fields, f"{page}: `{token}` is not a node config field"
            named += 1
    assert named >= 20


def test_operator_guide_config_defaults_match_the_code() -> None:
    rows = _config_rows()
    compared = 0
    for path, info in config_fields(NodeConfig):
        _, default = rows[path]
        if info.is_required():
            assert default == "required", f"{path} is required but documented as {default!r}"
            continue
        assert default != "required", f"{path} has a default but is documented as required"
        literal = default.strip("`") if default.startswith("`") and default.endswith("`") else None
        if literal is None:
            continue  # derived defaults are explained in words
        try:
            documented = json.loads(literal)
        except ValueError:
            continue
        actual = info.get_default(call_default_factory=True)
        if isinstance(actual, pydantic.BaseModel):
            continue
        actual_json = json.loads(json.dumps(actual, default=str))
        assert documented == actual_json, f"{path}: documented {documented!r}, code {actual!r}"
        compared += 1
    assert compared >= 10


def test_operator_guide_config_examples_are_valid_node_configs() -> None:
    configs = [
        doc
        for doc in _json_blocks(read("operator-guide.md"))
        if isinstance(doc, dict) and "workspace" in doc
    ]
    assert len(configs) >= 2, "the guide shows a config that starts and one that joins"
    modes = set()
    for doc in configs:
        config = NodeConfig.model_validate(doc, context={"base_dir": DOCS})
        modes.add(config.start.mode)
    assert modes >= {"start", "join"}


# ------------------------------------------------------------------------- error codes

_STATUS_AND_CODE = re.compile(r"`(\d{3}) ([A-Z][A-Za-z]+)`")
_SOURCE_PACKAGES = ("enclave_app", "governance", "client", "ledger", "host")


def test_every_error_code_the_docs_quote_is_one_the_code_sends() -> None:
    root = DOCS.parent
    source = "".join(
        path.read_text(encoding="utf-8")
        for package in _SOURCE_PACKAGES
        for path in (root / package).rglob("*.py")
    )
    quoted = 0
    for page in PAGES:
        for status, code in _STATUS_AND_CODE.findall(read(page)):
            assert f'"{code}"' in source, f"{page}: `{status} {code}` is not an error code"
            quoted += 1
    assert quoted >= 20


# ------------------------------------------------------------------------- command lines


def _click_commands() -> dict[str, set[str]]:
    """'receipt get' -> {'--out', '-o', ...} for every charter command and subcommand."""
    root = typer.main.get_command(cli_app)
    found: dict[str, set[str]] = {}

    # Typer bundles its own click: commands are duck-typed (params; groups have commands).
    def walk(command: Any, path: str) -> None:
        options = {
            opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt[0] == "-"
        }
        found[path] = options | {"--help"}
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(root, "")
    found["sandbox"] = _sandbox_options()
    return found


def _sandbox_options() -> set[str]:
    # `charter sandbox` hands its arguments to charter.sandbox_command.run's argparse parser.
    from charter.sandbox_command import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        run(["--help"])
    return set(re.findall(r"(--[a-z][a-z-]*)", out.getvalue()))


def _charter_invocations(text: str) -> Iterator[str]:
    for _, body in _FENCE.findall(text):
        joined = body.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("charter "):
                yield line.split(" #", 1)[0]
    for code in _INLINE_CODE.findall(text):
        if code.startswith("charter "):
            yield code


def test_every_flag_shown_with_a_charter_command_exists() -> None:
    commands = _click_commands()
    checked = 0
    for page in PAGES:
        for invocation in _charter_invocations(read(page)):
            words = invocation.split()[1:]
            path = ""
            while words and f"{path} {words[0]}".strip() in commands:
                path = f"{path} {words.pop(0)}".strip()
            if path in ("", "bench"):
                continue  # bench passes its arguments on to scripts/bench.py
            flags = {w.split("=", 1)[0] for w in words if w.startswith("-") and w != "-"}
            unknown = flags - commands[path]
            assert not unknown, f"{page}: `charter {path}` has no option {sorted(unknown)}"
            checked += 1
    assert checked >= 20


# Options of `charter propose` that choose where and as whom, not which actions.
_PROPOSE_TARGET_OPTIONS = frozenset(
    {"--network", "--url", "--service-cert", "--cert", "--key", "--member", "--node"}
    | {"--json", "--dry-run", "--help"}
)


def test_member_guide_lists_every_action_flag_of_charter_propose() -> None:
    action_flags = _click_commands()["propose"] - _PROPOSE_TARGET_OPTIONS
    table = section(read("member-guide.md"), "Proposing")
    listed = set(re.findall(r"^\| `(--[a-z-]+)", table, re.MULTILINE))
    assert action_flags == listed, {
        "missing": sorted(action_flags - listed),
        "not options": sorted(listed - action_flags),
    }
