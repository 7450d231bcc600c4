"""The ``iotmon`` command: one entry point whose subcommands run every part of the system."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iotmon.cli_settings import settings_or_exit
from iotmon.settings import Settings

app = typer.Typer(
    help="Factory IoT monitoring: stack, migrations, ingestion, processing, API.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
stack_app = typer.Typer(
    help="The local stack: Apache Kafka, PostgreSQL and Mosquitto.", no_args_is_help=True
)
topics_app = typer.Typer(help="Kafka topics of the registry.", no_args_is_help=True)
locations_app = typer.Typer(help="Master data: locations and sensors.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(locations_app, name="locations")


def _register_thresholds() -> None:
    from producers.thresholds_cmd import thresholds_app  # noqa: PLC0415

    app.add_typer(thresholds_app, name="thresholds")


_register_thresholds()


def _register_dlq() -> None:
    from producers.dlq_cmd import dlq_app  # noqa: PLC0415

    app.add_typer(dlq_app, name="dlq")


_register_dlq()


def _register_gateways() -> None:
    from iotmon.gateways_cmd import gateways_app  # noqa: PLC0415

    app.add_typer(gateways_app, name="gateways")


_register_gateways()

db_app = typer.Typer(help="PostgreSQL: least-privilege roles.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("roles")
def db_roles(
    passwords: Annotated[
        Path,
        typer.Option(
            help="Directory with a password file per role kind (migrator, sink, api); "
            "created when missing (mode 0600)."
        ),
    ],
) -> None:
    """Create the migrator, sink and API roles with SCRAM passwords (run as the database's
    superuser, DATABASE_URL), give the migrator the schema, and the others their rights on
    the tables that exist (every later `iotmon migrate` renews them)."""
    import psycopg  # noqa: PLC0415

    from iotmon.credentials import load_or_create_passwords  # noqa: PLC0415
    from iotmon.db.roles import KINDS, create_roles, grant_access  # noqa: PLC0415

    settings = _settings()
    db = settings.db
    try:
        with psycopg.connect(db.url, autocommit=True) as conn:
            names = create_roles(
                conn, db.roles_prefix, load_or_create_passwords(passwords, KINDS), db.db_schema
            )
            grant_access(conn, db.db_schema, db.roles_prefix)
    except psycopg.Error as exc:
        console.print(f"[red]PostgreSQL refused: {exc}[/red]")
        raise typer.Exit(1) from None
    for kind, role in names.items():
        console.print(f"{kind:9} {role}  (password: {passwords / kind})")


kafka_access_app = typer.Typer(
    help="Kafka principals of the components and their ACLs (SASL/SCRAM brokers).",
    no_args_is_help=True,
)
app.add_typer(kafka_access_app, name="kafka-access")


@kafka_access_app.command("plan")
def kafka_access_plan() -> None:
    """What each principal may read and write, for these settings."""
    from iotmon.kafka_access import access_plan  # noqa: PLC0415

    table = Table("principal", "resource", "pattern", "operations")
    for principal, grants in access_plan(_settings()).items():
        for g in grants:
            table.add_row(
                principal,
                f"{g.resource.name.lower()} {g.name}",
                g.pattern.name.lower(),
                ", ".join(op.name.lower() for op in g.operations),
            )
    Console().print(table)


@kafka_access_app.command("apply")
def kafka_access_apply(
    passwords: Annotated[
        Path | None,
        typer.Option(
            help="Directory with one password file per principal (created when missing, "
            "mode 0600); default: the local stack's credentials."
        ),
    ] = None,
) -> None:
    """Create the principals' SCRAM credentials and ACLs, logged in as the super user
    (IOTMON_KAFKA__SASL_USERNAME/PASSWORD; on the local stack its admin)."""
    from iotmon.credentials import load_or_create_passwords  # noqa: PLC0415
    from iotmon.kafka_access import PRINCIPALS, access_plan, apply  # noqa: PLC0415
    from iotmon.stack import Stack  # noqa: PLC0415

    settings = _settings()
    service = Stack(settings).kafka
    admin = settings.kafka
    if admin.security_protocol == "PLAINTEXT":
        admin = service.admin_settings(admin)
    directory = passwords or service.credential("x").parent
    try:
        apply(admin, access_plan(settings), load_or_create_passwords(directory, PRINCIPALS))
    except Exception as exc:  # noqa: BLE001 - the broker's refusal, said plainly
        console.print(f"[red]Kafka refused: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"Principals {', '.join(PRINCIPALS)}: passwords in {directory}")


console = Console(stderr=True)
log = logging.getLogger("iotmon")


def _settings() -> Settings:
    return settings_or_exit()


@stack_app.command("up")
def stack_up(
    migrate: bool = typer.Option(True, help="Apply database migrations once PostgreSQL answers."),
    topics: bool = typer.Option(True, help="Create the registry's Kafka topics."),
) -> None:
    """Start every service that is not running yet and wait until each answers."""
    from iotmon.stack import Stack, StackError  # noqa: PLC0415 - keep --help fast

    settings = _settings()
    try:
        for name, state in Stack(settings).up().items():
            console.print(f"{name}: {state}")
    except StackError as exc:
        console.print(f"[red]stack up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    if migrate:
        _migrate(settings)
    if topics:
        _create_topics(settings)
    _print_status(settings)


@stack_app.command("timescaledb")
def stack_timescaledb(
    require: bool = typer.Option(
        False, help="Fail when TimescaleDB cannot be installed (CI), instead of going on."
    ),
) -> None:
    """Build TimescaleDB from its source release and install it into the stack's PostgreSQL,
    unless the server has it already (the build is cached per version and PostgreSQL major)."""
    from iotmon.stack import StackError  # noqa: PLC0415
    from iotmon.stack.postgres import find_bin_dir  # noqa: PLC0415
    from iotmon.stack.timescaledb import Server, ensure, find_tarball  # noqa: PLC0415

    s = _settings().stack
    try:
        server = Server.of(find_bin_dir(s.postgres_bin_dir))
        console.print(
            ensure(server, find_tarball(s.timescaledb_tarball), s.cache_dir, require=require)
        )
    except StackError as exc:
        console.print(f"[red]TimescaleDB:[/red] {exc}")
        raise typer.Exit(1) from exc


@stack_app.command("down")
def stack_down() -> None:
    """Stop what `stack up` started, and nothing else."""
    from iotmon.stack import Stack  # noqa: PLC0415

    for name, stopped in Stack(_settings()).down().items():
        console.print(f"{name}: {'stopped' if stopped else 'was not running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Show each service, its address and whether it answers; exit 1 if one does not."""
    if not _print_status(_settings()):
        raise typer.Exit(1)


def _print_status(settings: Settings) -> bool:
    from iotmon.stack import Stack  # noqa: PLC0415

    table = Table("service", "address", "managed by stack", "answering")
    all_up = True
    for st in Stack(settings).status():
        all_up &= st.answering
        table.add_row(
            st.name,
            st.address,
            "yes" if st.managed else "no",
            "[green]yes[/green]" if st.answering else "[red]no[/red]",
        )
    Console().print(table)
    return all_up


@app.command("migrate")
def migrate_cmd() -> None:
    """Apply pending database migrations (safe to re-run)."""
    _migrate(_settings())


def _migrate(settings: Settings) -> None:
    from iotmon.db.migrate import MigrationError, current_version, migrate  # noqa: PLC0415

    try:
        applied = migrate(settings.db)
    except MigrationError as exc:
        console.print(f"[red]migration failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    version = current_version(settings.db)
    console.print(
        f"schema {settings.db.db_schema}: at version {version}"
        + (f" (applied {applied})" if applied else " (nothing to apply)")
    )


@topics_app.command("create")
def topics_create() -> None:
    """Create the registry's topics that do not exist yet."""
    _create_topics(_settings())


def _create_topics(settings: Settings) -> None:
    from iotmon.topics import ensure_topics  # noqa: PLC0415

    created = ensure_topics(settings.kafka)
    console.print(f"kafka topics: {len(created)} created" if created else "kafka topics: ok")


@topics_app.command("list")
def topics_list() -> None:
    """The registry: every topic with its key, partitions and cleanup policy."""
    from schemas.topics import TOPICS, topic_name  # noqa: PLC0415

    settings = _settings()
    table = Table("topic", "key", "partitions", "cleanup", "what")
    for spec in TOPICS.values():
        table.add_row(
            topic_name(spec.id, settings.kafka.topic_prefix),
            spec.key,
            str(spec.partitions or settings.kafka.default_partitions),
            spec.cleanup_policy,
            spec.description,
        )
    Console().print(table)


@app.command("schema")
def schema_cmd(
    out_dir: Annotated[Path, typer.Option(help="Where to write the JSON Schema files")] = Path(
        "schemas/json"
    ),
) -> None:
    """Export the JSON Schema of the reading payload (single and batch) for gateway vendors."""
    from schemas.export import write_json_schemas  # noqa: PLC0415

    for path in write_json_schemas(out_dir):
        console.print(f"wrote {path}")


@app.command("bridge")
def bridge_cmd() -> None:
    """MQTT -> Kafka bridge: QoS 1, persistent session, ack to MQTT after Kafka confirmed."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from iotmon.runtime import serve_metrics, stop_on_signals  # noqa: PLC0415
    from producers.bridge import BridgeConfigError  # noqa: PLC0415
    from producers.bridge_main import run  # noqa: PLC0415

    settings = _settings()
    registry = CollectorRegistry()
    try:
        serve_metrics(registry, settings.bridge.metrics_port, settings.metrics_host)
        run(settings, stop_on_signals(), registry)
    except BridgeConfigError as exc:
        console.print(f"[red]iotmon bridge:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command("ingest")
def ingest_cmd() -> None:
    """Validate raw readings into the readings topic; bad input to the dead-letter topic."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from iotmon.runtime import serve_metrics, stop_on_signals  # noqa: PLC0415
    from stream_apps.ingest.main import run  # noqa: PLC0415

    settings = _settings()
    registry = CollectorRegistry()
    serve_metrics(registry, settings.ingest.metrics_port, settings.metrics_host)
    run(settings, stop_on_signals(), registry)


@app.command("notifier")
def notifier_cmd() -> None:
    """Deliver alert notifications (webhook, Slack, e-mail, MQTT states), each once;
    escalation, silences, rate limits and digests."""
    import asyncio  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from iotmon.runtime import serve_metrics, stop_on_signals  # noqa: PLC0415
    from stream_apps.notifier.service import Notifier  # noqa: PLC0415

    settings = _settings()
    registry = CollectorRegistry()
    serve_metrics(registry, settings.notifier.metrics_port, settings.metrics_host)
    stopped = stop_on_signals()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def relay() -> None:  # a daemon thread: never holds up the exit
            stopped.wait()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=relay, daemon=True).start()
        await Notifier(settings, registry).run(stop)

    asyncio.run(main())


@app.command("api")
def api_cmd() -> None:
    """The HTTP API (FastAPI, served by uvicorn)."""
    import uvicorn  # noqa: PLC0415

    from api.app import create_app  # noqa: PLC0415

    settings = _settings()
    uvicorn.run(
        create_app(settings, settle=True),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
    )


@app.command("token")
def token_cmd(
    subject: Annotated[str, typer.Argument(help="who the token names (used for ack/resolve)")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "operator",
    ttl: Annotated[int, typer.Option(help="validity in seconds", min=1)] = 86400,
) -> None:
    """Print a JWT (HS256, signed with IOTMON_API__JWT_SECRET) for the API."""
    from api.deps import ROLES, issue_jwt  # noqa: PLC0415

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}")
    try:
        typer.echo(issue_jwt(_settings(), subject, role, ttl))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("worker")
def worker_cmd() -> None:
    """Stream processing (Faust): hourly windows, threshold checks, alerts."""
    from stream_apps.processing.main import run  # noqa: PLC0415

    run(_settings())


@app.command("sink")
def sink_cmd(
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these sinks (default: all)")
    ] = None,
) -> None:
    """Write Kafka topics to PostgreSQL (offsets committed after the transaction)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from iotmon.runtime import serve_metrics, stop_on_signals  # noqa: PLC0415
    from stream_apps.sinks.main import WRITERS, run  # noqa: PLC0415

    names = only or list(WRITERS)
    unknown = sorted(set(names) - set(WRITERS))
    if unknown:
        console.print(f"[red]unknown sinks {unknown}; known: {sorted(WRITERS)}[/red]")
        raise typer.Exit(2)
    settings = _settings()
    registry = CollectorRegistry()
    serve_metrics(registry, settings.sink.metrics_port, settings.metrics_host)
    run(settings, names, stop_on_signals(), registry)


@locations_app.command("import")
def locations_import(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or YAML file")],
) -> None:
    """Store locations and sensors in PostgreSQL and publish them to running stream apps."""
    from producers.masterdata import (  # noqa: PLC0415
        MasterDataError,
        import_master_data,
        load_file,
    )

    settings = _settings()
    try:
        data = load_file(path)
    except MasterDataError as exc:
        console.print(f"[red]{path}:[/red] {exc}")
        raise typer.Exit(2) from exc
    records = import_master_data(settings.db, settings.kafka, data)
    console.print(
        f"{len(data.locations)} locations, {len(data.sensors)} sensors imported; "
        f"{len(records)} sensor records published"
    )


def _register_simulate() -> None:
    from producers.simulate_cmd import simulate_command  # noqa: PLC0415

    app.command("simulate")(simulate_command)


_register_simulate()


@app.command("demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo_cmd(ctx: typer.Context) -> None:
    """The whole pipeline in the background (bridge, ingest, worker, sinks, API), the gateway
    simulator in front.

    Extra options go to `iotmon simulate`, e.g. `iotmon demo --duration 60 --heat-wave`.
    """
    from iotmon.demo import run_demo  # noqa: PLC0415

    raise typer.Exit(run_demo(_settings(), list(ctx.args)))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
