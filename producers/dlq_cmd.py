"""``iotmon dlq``: count, list, inspect and replay the dead letters of every stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iotmon.cli_settings import settings_or_exit
from iotmon.settings import Settings

if TYPE_CHECKING:  # the commands import the logic themselves: keeps --help fast
    from producers.deadletters import Selection

dlq_app = typer.Typer(
    help="Dead letters: what the stages rejected, why, and re-publishing it once fixed.",
    no_args_is_help=True,
)
console = Console(stderr=True)

DETAIL_WIDTH = 60

Reasons = Annotated[
    list[str] | None,
    typer.Option("--reason", help="Only this reason (repeatable); see schemas/deadletters.py"),
]
Stages = Annotated[
    list[str] | None,
    typer.Option("--stage", help="Only dead letters of this stage (repeatable), e.g. ingest"),
]
Sensors = Annotated[
    list[str] | None, typer.Option("--sensor", help="Only this sensor id (repeatable)")
]
Since = Annotated[
    str | None,
    typer.Option(help="Only dead letters written at or after this ISO-8601 time (UTC if bare)"),
]
Last = Annotated[
    str | None, typer.Option(help="Only dead letters of this last span: 90s, 15m, 1h, 2d, 1w")
]


def _settings() -> Settings:
    return settings_or_exit()


def _selection(
    reasons: list[str] | None = None,
    stages: list[str] | None = None,
    sensors: list[str] | None = None,
    since: str | None = None,
    last: str | None = None,
    offsets: list[int] | None = None,
) -> Selection:
    from producers.deadletters import Selection, parse_since  # noqa: PLC0415

    try:
        start = parse_since(since, last)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return Selection(
        reasons=frozenset(reasons or ()),
        stages=frozenset(stages or ()),
        sensors=frozenset(sensors or ()),
        offsets=frozenset(offsets or ()),
        since=start,
    )


def _text(value: str | None) -> str:
    """A value read from a record, safe to print: one line, no markup, no control bytes."""
    from producers.deadletters import one_line  # noqa: PLC0415

    return escape(one_line(value)) if value else "-"


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]dlq:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(1)


@dlq_app.command("count")
def count_command(
    reason: Reasons = None,
    stage: Stages = None,
    sensor: Sensors = None,
    since: Since = None,
    last: Last = None,
) -> None:
    """Dead letters by reason and stage, and the total."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from producers.deadletters import DeadLetterError, count_dead_letters  # noqa: PLC0415

    selection = _selection(reason, stage, sensor, since, last)
    settings = _settings()
    try:
        rows = count_dead_letters(settings.kafka, selection)
    except (DeadLetterError, TimeoutError, KafkaException) as exc:
        raise _fail(exc) from exc
    table = Table("reason", "stage", "count")
    for row in rows:
        table.add_row(_text(row.reason), _text(row.stage), str(row.count))
    table.add_section()
    table.add_row("total", "", str(sum(row.count for row in rows)))
    Console().print(table)


@dlq_app.command("list")
def list_command(
    reason: Reasons = None,
    stage: Stages = None,
    sensor: Sensors = None,
    since: Since = None,
    last: Last = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest N that match")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """One line per dead letter: offset, time, stage, reason, sensor, detail, size."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from producers.deadletters import (  # noqa: PLC0415
        DeadLetterError,
        list_dead_letters,
        one_line,
        summary,
    )

    selection = _selection(reason, stage, sensor, since, last)
    settings = _settings()
    try:
        listing = list_dead_letters(settings.kafka, selection, limit=limit)
    except (DeadLetterError, TimeoutError, KafkaException) as exc:
        raise _fail(exc) from exc
    if as_json:
        for letter in listing.letters:
            typer.echo(orjson.dumps(summary(letter)).decode())
        return
    table = Table("offset", "time (UTC)", "stage", "reason", "sensor", "detail", "size")
    for letter in listing.letters:
        row = summary(letter, DETAIL_WIDTH)
        sensor_id = one_line(row["sensor"] or "-", 40)
        if row["index"] is not None:
            sensor_id += f" [{row['index']}]"
        table.add_row(
            str(row["offset"]),
            (row["time"] or "-")[:19],
            _text(row["stage"]),
            _text(row["reason"]),
            escape(sensor_id),
            escape(row["detail"]),
            f"{row['size']}{' (cut)' if row['truncated'] else ''}",
        )
    Console().print(table)
    console.print(f"{len(listing.letters)} of {listing.matched} matching dead letters shown")


@dlq_app.command("show")
def show_command(
    offset: Annotated[int, typer.Argument(min=0, help="Offset on the dead-letter topic")],
    max_bytes: Annotated[
        int, typer.Option(min=1, help="Longest payload shown as text (in characters)")
    ] = 8192,
) -> None:
    """Every header and the payload of one dead letter (text when UTF-8, else hex)."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from producers.deadletters import (  # noqa: PLC0415
        DeadLetterError,
        get_dead_letter,
        printable,
        render_payload,
        stage_of,
    )

    settings = _settings()
    try:
        letter = get_dead_letter(settings.kafka, offset)
    except (DeadLetterError, TimeoutError, KafkaException, LookupError) as exc:
        raise _fail(exc) from exc
    out = Console(highlight=False)
    out.print(f"offset     {letter.partition}:{letter.offset}")
    out.print(f"time       {letter.timestamp.isoformat() if letter.timestamp else '-'}")
    out.print(f"stage      {_text(stage_of(letter))}")
    out.print(f"key        {_text(letter.key)}")
    size = f"{letter.size} bytes" + (f" ({len(letter.payload)} kept)" if letter.truncated else "")
    out.print(f"size       {size}")
    out.print("headers:")
    for name, value in letter.headers.items():
        out.print(f"  {escape(printable(name, keep=''))}: {escape(printable(value, keep=''))}")
    payload = render_payload(letter.payload, text_limit=max_bytes)
    out.print(f"payload ({payload.kind}):")
    out.print(escape(payload.body), soft_wrap=True)


@dlq_app.command("replay")
def replay_command(
    offset: Annotated[
        list[int] | None, typer.Option("--offset", min=0, help="This dead letter (repeatable)")
    ] = None,
    reason: Reasons = None,
    stage: Stages = None,
    sensor: Sensors = None,
    since: Since = None,
    last: Last = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be re-published")] = False,
    force: Annotated[
        bool, typer.Option(help="Re-publish dead letters that were replayed before, too")
    ] = False,
) -> None:
    """Re-publish the selected dead letters to the raw readings topic, once each.

    Needs a selection.  Of several dead letters of the same original record only the newest
    is re-published.  What was replayed before, and the dead letter of a replayed copy that
    was rejected again, are left out, unless --force.

    Cut payloads and dead letters of stages whose input is not a gateway message are skipped.

    Exit 1 when Kafka did not confirm every copy, or an --offset holds no dead letter.
    """
    import psycopg  # noqa: PLC0415
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from producers.deadletters import DeadLetterError  # noqa: PLC0415
    from producers.replay import replay_dead_letters  # noqa: PLC0415

    selection = _selection(reason, stage, sensor, since, last, offset)
    if selection.is_empty():
        raise typer.BadParameter(
            "select what to replay: --offset, --reason, --stage, --sensor, --since or --last"
        )
    settings = _settings()
    try:
        report = replay_dead_letters(
            settings.kafka, settings.db, selection, dry_run=dry_run, force=force
        )
    except (DeadLetterError, TimeoutError, KafkaException, psycopg.OperationalError) as exc:
        raise _fail(exc) from exc
    out = Console(highlight=False)
    for title, outcomes in (
        ("would re-publish" if dry_run else "re-published", report.replayed),
        ("already replayed (--force to re-publish)", report.already),
        ("rejected again after a replay (--force to re-publish)", report.again),
        ("skipped", report.skipped),
        ("failed", report.failed),
    ):
        if not outcomes:
            continue
        out.print(f"{title}:")
        for o in outcomes:
            note = f"  {_text(o.note)}" if o.note else ""
            out.print(
                f"  {o.offset:>8}  {_text(o.reason)}  {_text(o.stage)}  {_text(o.sensor)}{note}",
                soft_wrap=True,
            )
    verb = "to re-publish" if dry_run else "re-published"
    console.print(
        f"{len(report.replayed)} {verb}, {len(report.already)} already replayed, "
        f"{len(report.again)} rejected again, {len(report.skipped)} skipped, "
        f"{len(report.failed)} failed"
    )
    for missing in report.missing:
        console.print(f"[red]dlq:[/red] no dead letter at offset {missing}")
    if report.failed or report.missing:
        raise typer.Exit(1)
