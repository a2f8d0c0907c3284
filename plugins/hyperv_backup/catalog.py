"""The backup catalog (docs/catalog.md): one row per VM per DAG run, in SQL.

SQLite by default, PostgreSQL by URL. A row is written before a job starts and completed
after it, so a worker that dies mid-step leaves a `running` row that says how far it got;
a retry updates the same row (the key is dag_id, run_id, host, vm_name), never adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.functions import FunctionElement

from .facts import Status

CONNECTION_ID = "hyperv_backup_catalog"
KEY = ("dag_id", "run_id", "host", "vm_name")  # one row per VM per run

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
    Column("host_fault", Boolean),  # it failed because its host could not be reached or refused us: the host's fault, told once
    Column("run_kind", String(32)),  # scheduled, manual or backfill: who asked for this backup
    Column("restore_points", Integer),  # backup versions holding the VM on its target after this backup (the host's list)
    Column("oldest_restore_point", DateTime(timezone=True)),  # the oldest of them
    Column("claimed_from", DateTime(timezone=True)),  # host time: this row asked for a job then; see start_claimed
    Column("retired", Boolean),  # the host no longer listed the VM (this run's select_vms): see standing
    Column("updated_at", DateTime(timezone=True)),
    UniqueConstraint(*KEY, name="uq_vm_backups_run_vm"),
)
# The moment a row belongs to (the reports select by it): its run's data interval end, else its
# job's start, else its last write. Indexed as an expression, so a night's rows are found without
# reading the year around them, on SQLite and PostgreSQL alike.
DUE = func.coalesce(vm_backups.c.interval_end, vm_backups.c.job_started_at, vm_backups.c.updated_at)
INDEXES = (
    Index("ix_vm_backups_due", DUE),
    # each VM's last good backup before a moment, read from this index alone (it holds every column asked)
    Index("ix_vm_backups_vm", vm_backups.c.host, vm_backups.c.vm_name, vm_backups.c.status, vm_backups.c.job_started_at, DUE),
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
# One row per VM per restore-test run (docs/restore-tests.md): a backup booted as an isolated copy, and whether the
# copy and its files were removed after.
restore_tests = Table(
    "restore_tests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("host", String(64), nullable=False),
    Column("vm_name", String(256), nullable=False),
    Column("vm_id", String(64)),  # the original's id, as the recovered configuration holds it
    Column("backup_version", String(32)),
    Column("restored_as", String(300)),  # the copy's name
    Column("started_at", DateTime(timezone=True)),  # host time: the recovery's start
    Column("finished_at", DateTime(timezone=True)),  # host time: the clean-up's end
    Column("heartbeat_seconds", Float),  # the copy's start to its heartbeat OK; null when none came
    Column("status", String(16), nullable=False),  # succeeded | failed
    Column("error", Text),
    Column("cleaned_up", Boolean),  # the copy and its files are gone
    Column("updated_at", DateTime(timezone=True)),
    UniqueConstraint(*KEY, name="uq_restore_tests_run_vm"),
)
RESTORE_COLUMNS = [c.name for c in restore_tests.columns if c.name not in ("id", "updated_at")]
# The backup runs' order of VMs (select_vms's list): a VM's place is the map index of its steps. Airflow starts the
# steps that only wait on the host (verify merge, copy) in the triggerer and tells them no more than their place
# (operators.HostStepOperator.start_in_triggerer): they find their VM here, and its row in vm_backups.
run_order = Table(
    "run_order",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("place", Integer, primary_key=True),
    Column("host", String(64), nullable=False),
    Column("vm_name", String(256), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
ORDER_KEPT = timedelta(days=7)  # a run's order outlives any night; a step whose run's order is gone decides in a worker


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
    (3, ("run_kind",)),  # and INDEXES; rows of earlier versions get their run's kind from the run id
    (4, ("restore_points", "oldest_restore_point")),
    (5, ()),  # the restore_tests table (created with the tables added since)
    (6, ("host_fault",)),
    (7, ("claimed_from",)),
    (8, ("retired",)),
    (9, ()),  # the run_order table (created with the tables added since)
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
    `add_column`. The whole migration is one transaction, taken by one process at a time
    (`_migration_lock`): every host's first task of a night opens the catalog at the same moment,
    and each would otherwise create the same tables.
    """
    newest = MIGRATIONS[-1][0]
    with engine.connect() as db:
        if _is_at(db, newest):  # the catalog of every open but the first after an upgrade: no lock, no Alembic
            return newest
        from alembic.migration import MigrationContext  # 0.1 s to import, for each task that opens the catalog
        from alembic.operations import Operations
        from sqlalchemy import inspect

        db.rollback()
        _migration_lock(db)
        before = _version(db)
        if before is None:
            metadata.create_all(db)
            db.execute(schema_version.insert().values(version=newest))
            db.commit()
            return newest
        if before == newest:  # another process migrated it while this one waited for the lock
            return newest
        if SCHEMA_VERSION_TABLE not in inspect(db).get_table_names():
            schema_version.create(db)
            db.execute(schema_version.insert().values(version=1))
        metadata.create_all(db)  # tables added since (report_mails) that no column migration covers
        operations = Operations(MigrationContext.configure(db))
        present = {c["name"] for c in inspect(db).get_columns(vm_backups.name)}
        for version, columns in MIGRATIONS:
            if version <= before:
                continue
            for name in columns:
                if name not in present:
                    operations.add_column(vm_backups.name, Column(name, vm_backups.c[name].type))
            if version == 3:
                for index in INDEXES:
                    db.execute(CreateIndex(index, if_not_exists=True))
                _recorded_run_kinds(db)
        db.execute(schema_version.update().values(version=newest))
        db.commit()
    return before


def _is_at(db, version: int) -> bool:
    """Whether the catalog is at `version`, in one query: every step's try opens the catalog, and reflecting its
    tables (`_version`) cost PostgreSQL a scan of its own catalog, 4% of the steps' CPU in bench.scheduler."""
    try:
        return db.execute(select(func.max(schema_version.c.version))).scalar() == version
    except SQLAlchemyError:  # no version table: a new catalog, or the project's first (`_version` tells which)
        db.rollback()
        return False


def _version(db) -> int | None:
    """The catalog's schema version: None for a new database, 1 for the first catalog (it had no version table)."""
    from sqlalchemy import inspect

    tables = set(inspect(db).get_table_names())
    if vm_backups.name not in tables:
        return None
    if SCHEMA_VERSION_TABLE not in tables:
        return 1
    return db.execute(select(func.max(schema_version.c.version))).scalar() or 1


MIGRATION_LOCK = 0x4856_4243  # "HVBC": PostgreSQL's advisory lock key of the catalog's migration


def _migration_lock(db) -> None:
    """Begin the migration's transaction holding the catalog's one migration lock, released at its end: others wait,
    then find the schema done. PostgreSQL fails a second CREATE TABLE of a name (pg_type's unique index) rather than
    waiting for the first, hence an advisory lock; SQLite's write lock is taken at once (BEGIN IMMEDIATE) rather than
    at the first write, after the check for the tables that each would have made."""
    if db.dialect.name == "postgresql":
        db.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    else:
        db.exec_driver_sql("BEGIN IMMEDIATE")


def _recorded_run_kinds(db) -> None:
    """Rows written before `run_kind` existed: the kind is the run id's prefix (`scheduled__...`), and a row a
    backfill wrote has `missed` set. Runs are few, rows many: one UPDATE per run."""
    runs = db.execute(select(vm_backups.c.run_id, vm_backups.c.missed.is_not(None).label("missed"))
                      .where(vm_backups.c.run_kind.is_(None)).distinct()).all()
    for run_id, missed in runs:
        kind = "backfill" if missed else run_id.split("__", 1)[0]
        db.execute(vm_backups.update().where(vm_backups.c.run_id == run_id, vm_backups.c.run_kind.is_(None),
                                             vm_backups.c.missed.is_not(None) if missed else vm_backups.c.missed.is_(None))
                   .values(run_kind=kind))


def upsert(engine: Engine, key: dict[str, Any], values: dict[str, Any], now: datetime) -> None:
    """Insert the row for (dag_id, run_id, host, vm_name), or update the fields given."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown catalog columns: {sorted(unknown)}")
    if "status" in values and values["status"] not in set(Status):
        raise ValueError(f"status {values['status']!r} is not one of {', '.join(Status)}")
    values, now = {k: _as_utc(v) if isinstance(v, datetime) else v for k, v in values.items()}, _as_utc(now)
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(engine.dialect.name)
    if dialect is None:
        raise ValueError(f"the catalog runs on SQLite or PostgreSQL, not {engine.dialect.name}")
    statement = dialect.insert(vm_backups).values(**key, **{"status": Status.RUNNING} | values, updated_at=now)
    # one statement: two workers writing the same row at once cannot both insert it
    statement = statement.on_conflict_do_update(index_elements=list(KEY), set_=values | {"updated_at": now})
    with engine.begin() as db:
        db.execute(statement)


def record_restore_test(engine: Engine, key: dict[str, Any], values: dict[str, Any], now: datetime) -> None:
    """Insert or update the restore test of (dag_id, run_id, host, vm_name): a retried task updates its row."""
    unknown = set(values) - set(RESTORE_COLUMNS)
    if unknown:
        raise ValueError(f"unknown restore_tests columns: {sorted(unknown)}")
    values, now = {k: _as_utc(v) if isinstance(v, datetime) else v for k, v in values.items()}, _as_utc(now)
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[engine.dialect.name]
    statement = dialect.insert(restore_tests).values(**key, **values, updated_at=now)
    with engine.begin() as db:
        db.execute(statement.on_conflict_do_update(index_elements=list(KEY), set_=values | {"updated_at": now}))


def _newest_ids(*where):
    """Each VM's newest row's id (a row is inserted by the run it belongs to, so a later run's row has a larger id)."""
    return select(func.max(vm_backups.c.id).label("id")).where(*where).group_by(vm_backups.c.host, vm_backups.c.vm_name)


def standing(engine: Engine, host: str) -> list[str]:
    """The VMs of a host that the catalog still follows: every VM with a row whose newest row is not its retirement.

    A VM the host no longer lists (deleted, or renamed: Hyper-V keeps no record of either that a backup could read)
    is retired by the next run's select_vms, in one `skipped` row with `retired` set. From then on it is no one's
    RPO: the RPO watch, the report's RPO table and the fleet page leave it out, where it would otherwise be past its
    RPO every day for good. Its rows and its backups stay. If the host lists it again, its next row brings it back."""
    query = select(vm_backups.c.vm_name).where(vm_backups.c.id.in_(_newest_ids(vm_backups.c.host == host)),
                                               vm_backups.c.retired.is_not(True)).order_by(vm_backups.c.vm_name)
    with engine.connect() as db:
        return list(db.scalars(query))


def latest_per_vm(engine: Engine) -> list[dict[str, Any]]:
    """Each VM's newest row (its last backup, or the one under way), with its newest successful job start as
    `last_good`: the fleet page's and the RPO watch's facts, two grouped reads whatever the catalog's size. A
    retired VM (`standing`) is left out."""
    newest = _newest_ids().subquery()
    good = (select(vm_backups.c.host, vm_backups.c.vm_name, func.max(vm_backups.c.job_started_at).label("last_good"))
            .where(vm_backups.c.status == Status.SUCCEEDED).group_by(vm_backups.c.host, vm_backups.c.vm_name).subquery())
    query = (select(vm_backups, good.c.last_good).join(newest, vm_backups.c.id == newest.c.id)
             .outerjoin(good, (good.c.host == vm_backups.c.host) & (good.c.vm_name == vm_backups.c.vm_name))
             .where(vm_backups.c.retired.is_not(True)).order_by(vm_backups.c.host, vm_backups.c.vm_name))
    with engine.connect() as db:
        return [_utc_row(row) for row in db.execute(query)]


def last_tested(engine: Engine, host: str) -> dict[str, datetime]:
    """Each VM's newest restore test on a host (its end, UTC), whatever its outcome: the rotation's order."""
    query = (select(restore_tests.c.vm_name, func.max(restore_tests.c.finished_at)).where(restore_tests.c.host == host)
             .group_by(restore_tests.c.vm_name))
    with engine.connect() as db:
        return {name: _utc(at) for name, at in db.execute(query) if at is not None}


RESTORE_TEST_COLUMNS = ("host", "vm_name", "finished_at", "status", "heartbeat_seconds", "backup_version", "restored_as", "error",
                        "cleaned_up")


def last_restore_tests(engine: Engine, at: datetime | None = None) -> list[dict[str, Any]]:
    """Each VM's newest restore test (finished before `at`): `RESTORE_TEST_COLUMNS`, times UTC."""
    newest = select(restore_tests.c.host, restore_tests.c.vm_name, func.max(restore_tests.c.finished_at).label("finished_at"))
    if at is not None:
        newest = newest.where(restore_tests.c.finished_at < _as_utc(at))
    newest = newest.group_by(restore_tests.c.host, restore_tests.c.vm_name).subquery()
    query = select(*[restore_tests.c[n] for n in RESTORE_TEST_COLUMNS]).join(
        newest, (restore_tests.c.host == newest.c.host) & (restore_tests.c.vm_name == newest.c.vm_name)
        & (restore_tests.c.finished_at == newest.c.finished_at))
    with engine.connect() as db:
        return [_utc_row(row) for row in db.execute(query)]


def row(engine: Engine, key: dict[str, Any]) -> dict[str, Any] | None:
    found = rows(engine, **{k: key[k] for k in KEY})
    return found[0] if found else None


def last_good(engine: Engine, host: str) -> dict[str, datetime]:
    """Each VM's newest successful backup on a host (job start, UTC)."""
    query = (select(vm_backups.c.vm_name, func.max(vm_backups.c.job_started_at))
             .where(vm_backups.c.host == host, vm_backups.c.status == Status.SUCCEEDED).group_by(vm_backups.c.vm_name))
    with engine.connect() as db:
        return {name: _utc(at) for name, at in db.execute(query) if at is not None}


def covering_backup(engine: Engine, host: str, vm_name: str, after: datetime) -> dict[str, Any] | None:
    """The newest successful backup of a VM whose job started at or after `after`: it covers every interval before."""
    query = (select(vm_backups).where(vm_backups.c.host == host, vm_backups.c.vm_name == vm_name,
                                      vm_backups.c.status == Status.SUCCEEDED, vm_backups.c.job_started_at >= after)
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
                                      vm_backups.c.status == Status.RUNNING, vm_backups.c.job_started_at >= after,
                                      or_(vm_backups.c.dag_id != dag_id, vm_backups.c.run_id != run_id))
             .order_by(vm_backups.c.job_started_at))
    with engine.connect() as db:
        return [dict(found._mapping) for found in db.execute(query)]


def start_claimed(engine: Engine, key: dict[str, Any], clock: datetime, start: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Ask the host for a job (`start`: one Start-HvbVMBackup, returning the host's answer), claimed first
    (`clock`: the host's, just before): the jobs of this VM that start from then on and that no other row
    records are this row's (`job_claims`, record.ours).

    The host starts a job a moment before its starter can write it down; a concurrent run of the same VM that
    sees the job in that moment must not take it for its own, and it does not: it never asked for one, or the
    host refused it and it gave its claim back (while its row has no job yet). A claim is kept once set: a
    later job of the same backup (after a failed one, a restart) is claimed from the first. A Start whose
    answer was lost (`start` raised) keeps the claim, and the step's next try finds its job."""
    where = [vm_backups.c[k] == key[k] for k in KEY]
    with engine.begin() as db:
        db.execute(vm_backups.update().where(*where, vm_backups.c.claimed_from.is_(None)).values(claimed_from=_as_utc(clock)))
    answer = start()
    if not answer["started"]:
        with engine.begin() as db:
            db.execute(vm_backups.update().where(*where, vm_backups.c.job_started_at.is_(None)).values(claimed_from=None))
    return answer


def job_claims(engine: Engine, key: dict[str, Any], since: datetime) -> tuple[datetime | None, datetime | None, set[datetime]]:
    """What the catalog says of a VM's jobs since `since` (host time, UTC), for one row: the job it records, its
    claim (`start_claimed`), and the starts that other runs' rows record as theirs."""
    query = select(vm_backups.c.dag_id, vm_backups.c.run_id, vm_backups.c.job_started_at, vm_backups.c.claimed_from).where(
        vm_backups.c.host == key["host"], vm_backups.c.vm_name == key["vm_name"],
        or_(vm_backups.c.job_started_at >= _as_utc(since), (vm_backups.c.dag_id == key["dag_id"]) & (vm_backups.c.run_id == key["run_id"])))
    mine, claimed, others = None, None, set()
    with engine.connect() as db:
        for found in db.execute(query):
            if (found.dag_id, found.run_id) == (key["dag_id"], key["run_id"]):
                mine, claimed = _utc(found.job_started_at), _utc(found.claimed_from)
            elif found.job_started_at is not None:
                others.add(_utc(found.job_started_at))
    return mine, claimed, others


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands naive datetimes back


def _utc_row(row) -> dict[str, Any]:
    """A row read from the catalog as a dict, its times in UTC (`_utc`)."""
    return {k: _utc(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()}


def mail_sent(engine: Engine, report_key: str) -> dict[str, Any] | None:
    with engine.connect() as db:
        found = db.execute(select(report_mails).where(report_mails.c.report_key == report_key)).first()
    return dict(found._mapping) if found else None


def mails_sent(engine: Engine, keys: Sequence[str]) -> set[str]:
    """Which of `keys` the ledger holds: one query per 500 keys (SQLite's limit on a statement's parameters)."""
    found: set[str] = set()
    with engine.connect() as db:
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            found.update(db.execute(select(report_mails.c.report_key).where(report_mails.c.report_key.in_(chunk))).scalars())
    return found


def record_mail(engine: Engine, keys: Sequence[str], message_id: str, subject: str, recipients: list[str], now: datetime) -> None:
    """The ledger's record of one sent mail under each of `keys` (the mail's own, and each thing it told), in one
    transaction: all of them or, if the catalog fails midway, none (a retry then finds the mail unsent)."""
    with engine.begin() as db:
        db.execute(report_mails.insert(), [{"report_key": key, "message_id": message_id, "subject": subject,
                                            "recipients": ", ".join(recipients), "sent_at": now} for key in keys])


class utc_day(FunctionElement):
    """The UTC calendar day of a time, as text `YYYY-MM-DD`, on either backend."""

    type = String()
    inherit_cache = True


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element, compiler, **kw):
    return f"date({compiler.process(element.clauses, **kw)})"  # SQLite holds UTC times as ISO text


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element, compiler, **kw):
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def interval_rows(engine: Engine, start: datetime, end: datetime):
    """The rows due in [start, end), with their `due` (a pandas DataFrame): a report's night, read by the DUE index."""
    import pandas as pd

    query = (select(*[vm_backups.c[name] for name in COLUMNS], vm_backups.c.updated_at, DUE.label("due"))
             .where(DUE >= _as_utc(start), DUE < _as_utc(end)))
    with engine.connect() as db:
        return pd.read_sql(query, db)


def last_good_per_vm(engine: Engine, at: datetime):
    """Every VM with a row due before `at`, with its newest successful job start before `at` (NaT: none yet); not a
    VM whose newest such row retired it (`standing`)."""
    import pandas as pd

    good = (vm_backups.c.status == Status.SUCCEEDED) & (vm_backups.c.job_started_at < _as_utc(at))
    retirement = func.max(case((vm_backups.c.retired.is_(True), vm_backups.c.id)))
    query = (select(vm_backups.c.host, vm_backups.c.vm_name,
                    func.max(case((good, vm_backups.c.job_started_at))).label("last_good"))
             .where(DUE < _as_utc(at)).group_by(vm_backups.c.host, vm_backups.c.vm_name)
             .having((retirement.is_(None)) | (retirement != func.max(vm_backups.c.id))))
    with engine.connect() as db:
        return pd.read_sql(query, db)


def daily_totals(engine: Engine, since: datetime, at: datetime):
    """Per UTC day (of `due`) and host in [since, at), the backups that were tried (not covered, skipped or still
    running): how many, how many succeeded, the first job's start and the last job's end."""
    import pandas as pd

    tried = vm_backups.c.status.not_in([Status.COVERED, Status.SKIPPED, Status.RUNNING])
    day = utc_day(DUE).label("day")
    query = (select(day, vm_backups.c.host, func.count().label("vms"),
                    func.sum(case((vm_backups.c.status == Status.SUCCEEDED, 1), else_=0)).label("succeeded"),
                    func.min(vm_backups.c.job_started_at).label("first_start"),
                    func.max(vm_backups.c.job_finished_at).label("last_end"))
             .where(DUE >= _as_utc(since), DUE < _as_utc(at), tried).group_by(day, vm_backups.c.host))
    with engine.connect() as db:
        return pd.read_sql(query, db)


def _as_utc(moment: datetime) -> datetime:
    """A bound time as the catalog compares it, in UTC: SQLite's text holds no offset, so a time in another
    zone would compare as its local digits."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def past_their_turn(engine: Engine, dag_id: str, run_id: str) -> set[str]:
    """The VMs of a run that have had their turn for the host (their job started) or take none (they ended)."""
    query = select(vm_backups.c.vm_name).where(vm_backups.c.dag_id == dag_id, vm_backups.c.run_id == run_id,
                                               vm_backups.c.job_started_at.is_not(None) | (vm_backups.c.status != Status.RUNNING))
    with engine.connect() as db:
        return {row.vm_name for row in db.execute(query)}


def record_order(engine: Engine, dag_id: str, run_id: str, host: str, names: Sequence[str], now: datetime) -> None:
    """Keep a run's order of VMs (select_vms's list), in place of the order a try before kept, and forget the DAG's
    orders older than ORDER_KEPT: runs that ended long ago."""
    with engine.begin() as db:
        db.execute(run_order.delete().where(run_order.c.dag_id == dag_id,
                                            (run_order.c.run_id == run_id) | (run_order.c.recorded_at < now - ORDER_KEPT)))
        if names:
            db.execute(run_order.insert(), [{"dag_id": dag_id, "run_id": run_id, "place": place, "host": host, "vm_name": name,
                                             "recorded_at": now} for place, name in enumerate(names)])


def placed(engine: Engine, dag_id: str, run_id: str, place: int) -> dict[str, Any] | None:
    """The catalog row of the VM at `place` in a run's order (record_order), times in UTC; None when the run's
    order is no longer kept or the VM has no row yet."""
    query = (select(vm_backups).join(run_order, (run_order.c.dag_id == vm_backups.c.dag_id) & (run_order.c.run_id == vm_backups.c.run_id)
                                     & (run_order.c.host == vm_backups.c.host) & (run_order.c.vm_name == vm_backups.c.vm_name))
             .where(run_order.c.dag_id == dag_id, run_order.c.run_id == run_id, run_order.c.place == place))
    with engine.connect() as db:
        found = db.execute(query).first()
    return _utc_row(found) if found else None


def rows(engine: Engine, **filters: Any) -> list[dict[str, Any]]:
    query = select(vm_backups).order_by(vm_backups.c.id)
    for name, value in filters.items():
        query = query.where(vm_backups.c[name] == value)
    with engine.connect() as db:
        return [dict(row._mapping) for row in db.execute(query)]


def export(engine: Engine, path: str) -> int:
    """Copy the whole catalog (its backups, restore tests, sent mails and run orders) into a new SQLite file with the same tables and
    columns, times in UTC as every catalog keeps them: DEMO_OUT's `catalog.sqlite` when the catalog lives in
    PostgreSQL. Returns the number of backup rows copied."""
    target = engine_for(f"sqlite:///{path}")
    copied: dict[str, int] = {}
    with engine.connect() as source, target.begin() as db:
        for table in (vm_backups, report_mails, restore_tests, run_order):
            rows = [{k: _as_utc(v) if isinstance(v, datetime) else v for k, v in r._mapping.items()}
                    for r in source.execute(select(table))]
            if rows:
                db.execute(table.insert(), rows)
            copied[table.name] = len(rows)
    target.dispose()
    return copied[vm_backups.name]
