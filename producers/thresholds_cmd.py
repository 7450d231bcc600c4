"""``iotmon thresholds``: import threshold bands from a file, publish them to the stream apps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from iotmon.cli_settings import settings_or_exit
from iotmon.settings import Settings

thresholds_app = typer.Typer(
    help="Threshold bands: stored in PostgreSQL, published to the compacted thresholds topic.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _settings() -> Settings:
    return settings_or_exit()


@thresholds_app.command("import")
def import_command(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            metavar="FILE",
            help="CSV or YAML rows: threshold_type, level, min_value, max_value and optional "
            "factory, building, floor, loc_id, hold_seconds, clear_seconds, clear_margin",
        ),
    ],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="First delete the stored bands of every metric the file names "
            "(and publish their deletion); without it the rows are added.",
        ),
    ] = False,
) -> None:
    """Store the bands of FILE and publish every stored band; a wrong row stores nothing."""
    from producers.thresholds import (  # noqa: PLC0415 - keep --help fast
        ThresholdError,
        import_thresholds,
        load_thresholds_file,
    )

    settings = _settings()
    try:
        stored = import_thresholds(
            settings.db, settings.kafka, load_thresholds_file(path), replace=replace
        )
    except ThresholdError as exc:
        console.print(f"[red]{escape(str(path))}:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    console.print(f"{stored} thresholds imported{' (replacing)' if replace else ''} and published")


@thresholds_app.command("sync")
def sync_command() -> None:
    """Publish every stored band, and a deletion for each band no longer stored."""
    from producers.thresholds import sync_thresholds  # noqa: PLC0415

    settings = _settings()
    bands, deletions = sync_thresholds(settings.db, settings.kafka)
    console.print(f"{bands} thresholds published, {deletions} deletions")
