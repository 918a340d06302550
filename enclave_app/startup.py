"""What the enclave builds at start from its config: platform, app, governance routes,
the genesis members and constitution (kept out of the runtime loop in `main`)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from charter.enclave_app import interface as itf
from charter.enclave_app.app import App
from charter.enclave_app.errors import AppLoadError
from charter.enclave_app.node import Node
from charter.enclave_app.platform import Platform, VirtualPlatform
from charter.enclave_app.snp_platform import SnpPlatform

LOG = logging.getLogger("enclave")


def make_platform(config: itf.NodeConfig) -> Platform:
    if config.platform == "snp":
        endorsements = config.snp.endorsements_file
        platform = SnpPlatform(endorsements_file=Path(endorsements) if endorsements else None)
        # Ask the firmware for a report now: a machine without SEV-SNP stops here, saying so.
        LOG.info("event=snp_platform measurement=%s", platform.measurement)
        return platform
    return VirtualPlatform(Path(config.workspace), app_module=config.app)


def load_app(module_path: str) -> App:
    """Import the config's app module and return its `app`; AppLoadError says why not."""
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if module_path == missing or module_path.startswith(missing + "."):
            search = os.environ.get("PYTHONPATH")
            raise AppLoadError(
                f"app module {module_path!r} not found "
                f"({'PYTHONPATH=' + search if search else 'PYTHONPATH is unset'}): check the "
                "`app` name for a typo, and put the folder that holds the module on "
                "PYTHONPATH or install its package"
            ) from None
        raise AppLoadError(
            f"app module {module_path!r} imports {missing!r}, which is not installed: "
            f"install it in the node's environment ({sys.executable})"
        ) from None
    except SyntaxError as exc:
        raise AppLoadError(
            f"app module {module_path!r} has a syntax error at {exc.filename}:{exc.lineno}: "
            f"{exc.msg}"
        ) from None
    except Exception as exc:
        # The module's own top-level code failed; name the line so it can be fixed.
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise AppLoadError(
            f"app module {module_path!r} failed while importing: {type(exc).__name__}: {exc} "
            f"(at {frame.filename}:{frame.lineno})"
        ) from None
    app = getattr(module, "app", None)
    if not isinstance(app, App):
        raise AppLoadError(
            f"app module {module_path!r} has no `app = App(...)` at module level: define one "
            "(see docs/app-developer-guide.md)"
        )
    return app


def include_governance(node: Node) -> None:
    from charter.enclave_app.gov_endpoints import GovHooks, make_gov_app
    from charter.enclave_app.recovery_endpoints import RecoveryHooks
    from charter.enclave_app.recovery_endpoints import register as register_recovery

    hooks = GovHooks(
        merkle_root=node.merkle_root, now_s=node.now_s, apply_effects=node.apply_effects
    )
    gov_app = make_gov_app(hooks)
    register_recovery(
        gov_app,
        RecoveryHooks(
            now_s=node.now_s,
            storage_key=node.share_storage_key,
            random_bytes=node.core.entropy.token_bytes,
            on_complete=node.on_recovery_shares_complete,
            replaying_private=lambda: node.state == "ReadingPrivateLedger",
        ),
    )
    node.routes.include(gov_app)


def initial_members(config: itf.NodeConfig) -> list[dict[str, Any]]:
    members = []
    for member in config.start.members:
        entry: dict[str, Any] = {"cert": Path(member.cert).read_text()}
        if member.encryption_key is not None:
            entry["encryption_public_key"] = Path(member.encryption_key).read_text()
        if member.data is not None:
            entry["member_data"] = member.data
        members.append(entry)
    return members


def genesis_constitution(config: itf.NodeConfig) -> Any:
    if config.start.constitution is None:
        return None
    from charter.governance.constitution import Constitution

    return Constitution.model_validate_json(Path(config.start.constitution).read_bytes())
