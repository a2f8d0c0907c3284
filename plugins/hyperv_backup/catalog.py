"""The backup catalog (docs/catalog.md): one row per VM per DAG run, in SQL.

SQLite by default, PostgreSQL by URL. A row is written before a job starts and completed
after it, so a worker that dies mid-step leaves a `running` row that says how far it got;
a retry updates the same row (the key is dag_id, run_id, host, vm_name), never adds one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine

CONNECTION_ID = "hyperv_backup_catalog"
STATUSES = ("succeeded", "failed", "skipped", "covered", "deferred", "running")

metadata = MetaData()
vm_backups = Table(
    "vm_backups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("interval_start", DateTime(timezone=True)),
    Column("interval_end", DateTime(timezone=True)),
    Column("host", String(64), nullable=False),
    Column("vm_name", String(256), nullable=False),
    Column("vm_id", String(64)),
    Column("predicted_mode", String(16)),
    Column("mode", String(16)),
    Column("mode_reasons", Text),  # JSON list
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("job_started_at", DateTime(timezone=True)),
    Column("job_finished_at", DateTime(timezone=True)),
    Column("snapshot_at", DateTime(timezone=True)),
    Column("merged_at", DateTime(timezone=True)),
    Column("bytes_copied", BigInteger),
    Column("offline_seconds", Float),
    Column("uptime_reset", Boolean),
    Column("backup_version", String(32)),
    Column("missed", Text),  # extension: why this interval was not backed up on time (set by backfills)
    Column("attempts", Integer),  # Windows Server Backup jobs started for this row (a new one after a transient failure or a restart)
    Column("host_restarted", Boolean),  # the host restarted during the backup (its uptime reset is no checkpoint)
    Column("updated_at", DateTime(timezone=True)),
    UniqueConstraint("dag_id", "run_id", "host", "vm_name", name="uq_vm_backups_run_vm"),
)
# Which report e-mails went out: a retry of the send task finds its report here and does not send it twice.
report_mails = Table(
    "report_mails",
    metadata,
    Column("report_key", String(250), primary_key=True),
    Column("message_id", String(250), nullable=False),
    Column("subject", Text, nullable=False),
    Column("recipients", Text, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
)
COLUMNS = [c.name for c in vm_backups.columns if c.name not in ("id", "updated_at")]


def sqlalchemy_url(conn_type: str, host: str | None, login: str | None, password: str | None, port: int | None,
                   schema: str | None, extra: dict[str, Any]) -> str:
    """The SQLAlchemy URL of an Airflow connection (a `sqlalchemy_url` in the extra wins)."""
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    if conn_type == "sqlite":
        return f"sqlite:///{host}"
    if conn_type in ("postgres", "postgresql"):
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg2", username=login, password=password, host=host, port=port,
                          database=schema).render_as_string(hide_password=False)
    raise ValueError(f"catalog connection type {conn_type!r} is not supported; use sqlite or postgres")


# The catalog's schema versions, oldest first: each names the columns it added to vm_backups.
# A catalog written by an earlier version is migrated (Alembic's operations, on SQLite and
# PostgreSQL alike), never patched around by its readers.
SCHEMA_VERSION_TABLE = "hyperv_backup_schema"
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, ()),  # the first catalog (docs/catalog.md, up to `missed`)
    (2, ("attempts", "host_restarted")),
)
schema_version = Table(SCHEMA_VERSION_TABLE, metadata, Column("version", Integer, primary_key=True))


def engine_for(url: str) -> Engine:
    engine = create_engine(url, future=True)
    migrate(engine)
    return engine


def migrate(engine: Engine) -> int:
    """Bring the catalog to the newest schema; returns the version it was at before.

    A new catalog is created at the newest version. One without a version table is of version 1
    (the project's first catalog). Each later version's columns are added with Alembic's
    `add_column`, in one transaction per version.
    """
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import inspect

    newest = MIGRATIONS[-1][0]
    with engine.begin() as db:
        existing = set(inspect(db).get_table_names())
        if vm_backups.name not in existing:
            metadata.create_all(db)
            db.execute(schema_version.insert().values(version=newest))
            return newest
        if SCHEMA_VERSION_TABLE not in existing:
            schema_version.create(db)
            db.execute(schema_version.insert().values(version=1))
        metadata.create_all(db)  # tables added since (report_mails) that no column migration covers
        before = db.execute(select(func.max(schema_version.c.version))).scalar() or 1
    for version, columns in MIGRATIONS:
        if version <= before:
            continue
        with engine.begin() as db:
            operations = Operations(MigrationContext.configure(db))
            present = {c["name"] for c in inspect(db).get_columns(vm_backups.name)}
            for name in columns:
                if name not in present:
                    operations.add_column(vm_backups.name, Column(name, vm_backups.c[name].type))
            db.execute(schema_version.update().values(version=version))
    return before


def upsert(engine: Engine, key: dict[str, Any], values: dict[str, Any], now: datetime) -> None:
    """Insert the row for (dag_id, run_id, host, vm_name), or update the fields given."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown catalog columns: {sorted(unknown)}")
    if "status" in values and values["status"] not in STATUSES:
        raise ValueError(f"status {values['status']!r} is not one of {STATUSES}")
    where = [vm_backups.c[k] == key[k] for k in ("dag_id", "run_id", "host", "vm_name")]
    with engine.begin() as db:
        existing = db.execute(select(vm_backups.c.id).where(*where)).first()
        if existing is None:
            db.execute(vm_backups.insert().values(**key, **{"status": "running"} | values, updated_at=now))
        else:
            db.execute(vm_backups.update().where(vm_backups.c.id == existing.id).values(**values, updated_at=now))


def row(engine: Engine, key: dict[str, Any]) -> dict[str, Any] | None:
    found = rows(engine, **{k: key[k] for k in ("dag_id", "run_id", "host", "vm_name")})
    return found[0] if found else None


def last_good(engine: Engine, host: str) -> dict[str, datetime]:
    """Each VM's newest successful backup on a host (job start, UTC)."""
    query = (select(vm_backups.c.vm_name, func.max(vm_backups.c.job_started_at))
             .where(vm_backups.c.host == host, vm_backups.c.status == "succeeded").group_by(vm_backups.c.vm_name))
    with engine.connect() as db:
        return {name: _utc(at) for name, at in db.execute(query) if at is not None}


def covering_backup(engine: Engine, host: str, vm_name: str, after: datetime) -> dict[str, Any] | None:
    """The newest successful backup of a VM whose job started at or after `after`: it covers every interval before."""
    query = (select(vm_backups).where(vm_backups.c.host == host, vm_backups.c.vm_name == vm_name,
                                      vm_backups.c.status == "succeeded", vm_backups.c.job_started_at >= after)
             .order_by(vm_backups.c.job_started_at.desc()).limit(1))
    with engine.connect() as db:
        found = db.execute(query).first()
    return dict(found._mapping) if found else None


def backups_under_way(engine: Engine, host: str, vm_name: str, after: datetime, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Other runs' backups of a VM whose job started at or after `after` and has no result yet.

    Concurrent backfill runs meet here: one run's catch-up job is under way, and the others
    wait for its result instead of starting a second job for the same VM.
    """
    query = (select(vm_backups).where(vm_backups.c.host == host, vm_backups.c.vm_name == vm_name,
                                      vm_backups.c.status == "running", vm_backups.c.job_started_at >= after,
                                      or_(vm_backups.c.dag_id != dag_id, vm_backups.c.run_id != run_id))
             .order_by(vm_backups.c.job_started_at))
    with engine.connect() as db:
        return [dict(found._mapping) for found in db.execute(query)]


def job_owner(engine: Engine, host: str, vm_name: str, job_started_at: datetime) -> tuple[str, str] | None:
    """The (dag_id, run_id) whose row records this VM's job started at that host time, if any."""
    query = select(vm_backups.c.dag_id, vm_backups.c.run_id).where(
        vm_backups.c.host == host, vm_backups.c.vm_name == vm_name, vm_backups.c.job_started_at == job_started_at)
    with engine.connect() as db:
        found = db.execute(query).first()
    return (found.dag_id, found.run_id) if found else None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands naive datetimes back


def mail_sent(engine: Engine, report_key: str) -> dict[str, Any] | None:
    with engine.connect() as db:
        found = db.execute(select(report_mails).where(report_mails.c.report_key == report_key)).first()
    return dict(found._mapping) if found else None


def record_mail(engine: Engine, report_key: str, message_id: str, subject: str, recipients: list[str], now: datetime) -> None:
    with engine.begin() as db:
        db.execute(report_mails.insert().values(report_key=report_key, message_id=message_id, subject=subject,
                                                recipients=", ".join(recipients), sent_at=now))


def frame(engine: Engine):
    """The whole catalog as a pandas DataFrame, for the reports (which select by each row's due time)."""
    import pandas as pd

    query = select(*[vm_backups.c[name] for name in COLUMNS], vm_backups.c.updated_at)
    with engine.connect() as db:
        return pd.read_sql(query, db)


def past_their_turn(engine: Engine, dag_id: str, run_id: str) -> set[str]:
    """The VMs of a run that have had their turn for the host (their job started) or take none (they ended)."""
    query = select(vm_backups.c.vm_name).where(vm_backups.c.dag_id == dag_id, vm_backups.c.run_id == run_id,
                                               vm_backups.c.job_started_at.is_not(None) | (vm_backups.c.status != "running"))
    with engine.connect() as db:
        return {row.vm_name for row in db.execute(query)}


def rows(engine: Engine, **filters: Any) -> list[dict[str, Any]]:
    query = select(vm_backups).order_by(vm_backups.c.id)
    for name, value in filters.items():
        query = query.where(vm_backups.c[name] == value)
    with engine.connect() as db:
        return [dict(row._mapping) for row in db.execute(query)]
