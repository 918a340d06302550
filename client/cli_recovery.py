"""`charter recovery ...`: disaster recovery, one command per role (see the operator guide's
"Disaster recovery")."""

from __future__ import annotations

import typer

from charter.cli_recovery_start import recovery_start

recovery_app = typer.Typer(
    help="Recover a service that lost its majority.", no_args_is_help=True, rich_markup_mode=None
)

recovery_app.command("start")(recovery_start)
