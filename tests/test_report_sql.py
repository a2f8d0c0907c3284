"""The report reads only what it needs, in SQL, on SQLite and PostgreSQL, and its frames are the
ones a read of the whole catalog gives.

The reference below is the report's earlier way, kept here as an oracle: read every row into
pandas, then select by each row's due time and aggregate there. The catalog it runs against is
a mixed fleet over 45 nights with the rows a real catalog holds besides good nights: manual runs
with no data interval, rows that never got a job (only `updated_at`), covered, skipped, running
and deferred rows, jobs with no recorded end, and nights that straddle UTC midnight.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy
from hyperv_backup import catalog, report
from hyperv_backup.windows import Window

END = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
NIGHT = report.Interval(END - timedelta(days=1), END)
HOSTS = ("HV01", "HV02", "HV03")
WINDOWS = {"HV01": Window("22:00", "06:00", "Europe/Berlin"), "HV02": Window("23:30", "05:00", "UTC"),
           "HV03": Window("20:00", "02:00", "America/New_York")}


def fleet(nights: int = 45, vms_per_host: int = 8, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for night in range(nights):
        for h, host in enumerate(HOSTS):
            due = END - timedelta(days=nights - night) + timedelta(hours=14 + 2 * h, minutes=30 * h)  # HV03 at 23:00 UTC
            kind = "scheduled" if night % 9 else "manual"
            run_id = f"{kind}__{due:%Y-%m-%dT%H:%M}"
            clock = due + timedelta(minutes=float(rng.integers(0, 20)))
            for v in range(vms_per_host):
                roll = rng.random()
                status = ("succeeded" if roll < 0.75 else "failed" if roll < 0.85 else "covered" if roll < 0.88
                          else "skipped" if roll < 0.91 else "deferred" if roll < 0.95 else "running")
                minutes = float(rng.gamma(2.0, 9.0))
                ran = status in ("succeeded", "failed", "running")
                started, finished = (clock, clock + timedelta(minutes=minutes)) if ran else (None, None)
                if status == "running" or (status == "failed" and rng.random() < 0.3):
                    finished = None  # the job's end was never recorded
                mode = ("online", "checkpoint", "saved", "offline")[int(rng.choice(4, p=[0.6, 0.25, 0.1, 0.05]))]
                manual = kind == "manual"
                rows.append({
                    "dag_id": f"hyperv_backup_{host.lower()}", "run_id": run_id, "host": host, "vm_name": f"{host}-VM{v}",
                    "interval_start": None if manual else due - timedelta(days=1), "interval_end": None if manual else due,
                    "vm_id": f"id-{host}-{v}", "predicted_mode": mode, "mode": mode if status == "succeeded" else None,
                    "mode_reasons": json.dumps([f"reason {v}"]), "status": status,
                    "error": None if status == "succeeded" else f"{status} because", "job_started_at": started,
                    "job_finished_at": finished, "snapshot_at": started and started + timedelta(seconds=40),
                    "merged_at": started and started + timedelta(seconds=90), "bytes_copied": int(minutes * 60 * 1e8),
                    "offline_seconds": 30.0 if mode == "saved" else 0.0, "uptime_reset": mode == "checkpoint",
                    "backup_version": None, "missed": None, "attempts": 1, "host_restarted": False, "run_kind": kind,
                    "updated_at": (finished or clock) + timedelta(seconds=5),
                })
                if ran:
                    clock += timedelta(minutes=minutes)
    return rows


def reference(every_row: pd.DataFrame, interval: report.Interval, days: int = 30) -> dict[str, pd.DataFrame]:
    """The frames from the whole catalog read into pandas (the report's earlier implementation)."""
    history = report._utc(every_row, report.TIME_COLUMNS)
    history["due"] = history["interval_end"].fillna(history["job_started_at"]).fillna(history["updated_at"])
    at = interval.end
    rows = history[(history["due"] >= interval.start) & (history["due"] < at)]
    known = history[history["due"] < at]
    good = known[(known["status"] == "succeeded") & (known["job_started_at"] < at)]
    last = good.groupby(["host", "vm_name"], as_index=False)["job_started_at"].max().rename(columns={"job_started_at": "last_good"})
    vms_known = known[["host", "vm_name"]].drop_duplicates().merge(last, on=["host", "vm_name"], how="left")
    since = pd.Timestamp(at) - pd.Timedelta(days=days)
    recent = history[(history["due"] >= since) & (history["due"] < at) & ~history["status"].isin(["covered", "skipped", "running"])]
    day = recent["due"].dt.floor("D").dt.strftime("%Y-%m-%d")
    daily = recent.assign(day=day, ok=recent["status"].eq("succeeded").astype(int)).groupby(["day", "host"], as_index=False).agg(
        vms=("ok", "size"), succeeded=("ok", "sum"), first_start=("job_started_at", "min"), last_end=("job_finished_at", "max"))
    built = report.build(report.Inputs(rows, vms_known, daily), interval, WINDOWS, {"HV02": 12})
    return {"vms": built.vms, "windows": built.windows, "rpo": built.rpo, "trend": built.trend, "impact": built.impact}


def _same(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """Equal values; time columns may differ in resolution only (SQL hands back microseconds)."""
    ours, theirs = ours.reset_index(drop=True), theirs.reset_index(drop=True)
    for frame in (ours, theirs):
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
                frame[column] = frame[column].dt.as_unit("us")
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False, check_exact=False, rtol=1e-9)
    assert list(ours.dtypes.astype(str).str.replace("ns", "us")) == list(theirs.dtypes.astype(str).str.replace("ns", "us"))


@pytest.fixture
def fleet_catalog(catalog_url):
    engine = catalog.engine_for(catalog_url)
    rows = fleet()
    with engine.begin() as db:
        db.execute(catalog.vm_backups.insert(), rows)
    return engine


@pytest.mark.parametrize("interval", [NIGHT, NIGHT.__class__(END - timedelta(days=20, hours=5), END - timedelta(days=19), False),
                                      NIGHT.__class__(END + timedelta(days=30), END + timedelta(days=31))],
                         ids=["last night", "a past 43-hour interval", "a night after the catalog ends"])
def test_the_report_from_sql_equals_the_report_from_every_row(fleet_catalog, interval):
    every_row = pd.read_sql(sqlalchemy.select(catalog.vm_backups), fleet_catalog.connect())
    expected = reference(every_row, interval)
    built = report.build(report.read(fleet_catalog, interval), interval, WINDOWS, {"HV02": 12})
    assert not built.rpo.empty and (interval.end > END + timedelta(days=1) or not built.vms.empty)
    for name, frame in expected.items():
        _same(getattr(built, name), frame)


def test_a_night_is_found_by_the_due_index_not_by_reading_the_table(tmp_path):
    engine = catalog.engine_for(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    query = sqlalchemy.select(catalog.vm_backups.c.vm_name).where(catalog.DUE >= NIGHT.start, catalog.DUE < NIGHT.end)
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as db:
        plan = " ".join(str(step[-1]) for step in db.execute(sqlalchemy.text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "ix_vm_backups_due" in plan, plan


def _version_2_catalog(engine) -> None:
    """A catalog as version 2 left it (before `run_kind`), with three rows."""
    old = sqlalchemy.MetaData()
    columns = [sqlalchemy.Column(c.name, c.type, primary_key=c.primary_key) for c in catalog.vm_backups.columns if c.name != "run_kind"]
    table = sqlalchemy.Table("vm_backups", old, *columns)
    version = sqlalchemy.Table(catalog.SCHEMA_VERSION_TABLE, old, sqlalchemy.Column("version", sqlalchemy.Integer, primary_key=True))
    old.create_all(engine)
    base = {"dag_id": "hyperv_backup_hv01", "host": "HV01", "status": "succeeded"}
    with engine.begin() as db:
        db.execute(version.insert().values(version=2))
        db.execute(table.insert(), [base | {"run_id": "scheduled__2026-11-20T21:00", "vm_name": "A", "missed": None},
                                    base | {"run_id": "scheduled__2026-11-20T21:00", "vm_name": "B", "missed": "the scheduled run failed"},
                                    base | {"run_id": "manual__2026-11-21T10:00", "vm_name": "A", "missed": None}])


def test_a_catalog_of_the_previous_version_gets_the_run_kind_and_the_indexes(catalog_url):
    """A version-2 catalog (before `run_kind`): the migration adds the column, fills it from the run ids
    (a backfill's row by its `missed`), and creates the report's indexes."""
    engine = sqlalchemy.create_engine(catalog_url)
    _version_2_catalog(engine)
    assert catalog.migrate(engine) == 2
    kinds = {(r["run_id"][:6], r["vm_name"]): r["run_kind"] for r in catalog.rows(engine)}
    assert kinds == {("schedu", "A"): "scheduled", ("schedu", "B"): "backfill", ("manual", "A"): "manual"}
    listed = ("SELECT name FROM sqlite_master WHERE type = 'index'" if engine.dialect.name == "sqlite"
              else "SELECT indexname FROM pg_indexes WHERE tablename = 'vm_backups'")
    with engine.connect() as db:
        indexes = set(db.execute(sqlalchemy.text(listed)).scalars())
    assert {"ix_vm_backups_due", "ix_vm_backups_vm"} <= indexes
    assert catalog.migrate(engine) == catalog.MIGRATIONS[-1][0]  # and once is enough
    assert "run_order" in sqlalchemy.inspect(engine).get_table_names()  # schema 9: the triggerer's steps find their VM there


def test_a_runs_order_names_the_vm_at_each_place_and_is_kept_for_a_week(catalog_url):
    """What a step Airflow starts in the triggerer reads: the VM at its place, with the VM's row of that run. Two runs
    of a DAG at once (backfilled intervals) keep an order each; a try of select_vms replaces its run's; a week on, the
    orders of runs long ended are gone."""
    engine = catalog.engine_for(catalog_url)
    now = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
    dag = "hyperv_backup_hv01"
    for run_id in ("scheduled__1", "scheduled__2"):
        for name in ("A", "B"):
            catalog.upsert(engine, {"dag_id": dag, "run_id": run_id, "host": "HV01", "vm_name": name},
                           {"status": "running", "vm_id": f"id-{name}-{run_id[-1]}", "job_started_at": now}, now)
    catalog.record_order(engine, "hyperv_backup_hv02", "scheduled__1", "HV02", ["A"], now)  # another DAG's
    catalog.record_order(engine, dag, "scheduled__1", "HV01", ["A", "C"], now)
    catalog.record_order(engine, dag, "scheduled__1", "HV01", ["B", "A", "C"], now)  # select_vms tried again
    catalog.record_order(engine, dag, "scheduled__2", "HV01", ["A", "B"], now + timedelta(hours=1))
    assert [catalog.placed(engine, dag, "scheduled__1", place)["vm_id"] for place in (0, 1)] == ["id-B-1", "id-A-1"]
    assert [catalog.placed(engine, dag, "scheduled__2", place)["vm_id"] for place in (0, 1)] == ["id-A-2", "id-B-2"]
    assert catalog.placed(engine, dag, "scheduled__1", 0)["job_started_at"] == now  # UTC on SQLite too
    assert catalog.placed(engine, dag, "scheduled__1", 2) is None  # C has no row yet
    assert catalog.placed(engine, "hyperv_backup_hv02", "scheduled__1", 0) is None  # kept, but A has no row on HV02
    catalog.record_order(engine, dag, "scheduled__9", "HV01", ["A"], now + timedelta(days=7, minutes=30))
    assert catalog.placed(engine, dag, "scheduled__1", 0) is None  # a week old: forgotten
    assert catalog.placed(engine, dag, "scheduled__2", 1)["vm_id"] == "id-B-2"  # not quite a week: kept
    with engine.connect() as db:
        count = sqlalchemy.select(sqlalchemy.func.count()).select_from(catalog.run_order)
        assert db.execute(count).scalar() == 4  # HV02's A, scheduled__2's two, scheduled__9's one



def test_the_upsert_is_one_statement_and_keeps_what_it_was_not_given(catalog_url):
    engine = catalog.engine_for(catalog_url)
    key = {"dag_id": "d", "run_id": "manual__1", "host": "HV01", "vm_name": "A"}
    berlin = datetime(2026, 11, 23, 22, 0, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    catalog.upsert(engine, key, {"predicted_mode": "online", "run_kind": "manual"}, datetime(2026, 11, 23, tzinfo=UTC))
    catalog.upsert(engine, key, {"job_started_at": berlin}, datetime(2026, 11, 23, 1, tzinfo=UTC))
    catalog.upsert(engine, key, {"status": "succeeded"}, datetime(2026, 11, 23, 2, tzinfo=UTC))
    (found,) = catalog.rows(engine)
    assert (found["status"], found["predicted_mode"], found["run_kind"]) == ("succeeded", "online", "manual")
    assert found["job_started_at"].replace(tzinfo=UTC) == datetime(2026, 11, 23, 22, 0, tzinfo=UTC)  # stored as UTC
    with pytest.raises(ValueError, match="status 'done' is not one of"):
        catalog.upsert(engine, key, {"status": "done"}, datetime(2026, 11, 23, 3, tzinfo=UTC))


def test_a_vm_the_host_no_longer_lists_is_retired_from_the_rpo_until_it_comes_back(catalog_url):
    """B was backed up on the first night and deleted before the second, whose select_vms retired it (one `skipped` row
    with `retired`): no longer followed by the RPO watch and the fleet page (latest_per_vm) nor by the report's RPO
    table (last_good_per_vm), where it would be past its RPO every day for good; its rows stay. Listed again (a VM
    of that name restored or re-created), its next row brings it back. C, never backed up and retired, goes too."""
    engine = catalog.engine_for(catalog_url)
    nights = [datetime(2026, 11, day, 22, tzinfo=UTC) for day in (20, 21, 22)]

    def row(night: int, vm: str, **values) -> None:
        key = {"dag_id": "hyperv_backup_hv01", "run_id": f"scheduled__{nights[night]:%Y-%m-%d}", "host": "HV01", "vm_name": vm}
        catalog.upsert(engine, key, {"interval_end": nights[night]} | values, nights[night])

    for vm in ("A", "B"):
        row(0, vm, status="succeeded", job_started_at=nights[0])
    row(0, "C", status="failed", error="0x80070070")
    row(1, "A", status="succeeded", job_started_at=nights[1])
    for vm in ("B", "C"):
        row(1, vm, status="skipped", retired=True, error="no longer on HV01")
    at = nights[1] + timedelta(hours=30)
    assert catalog.standing(engine, "HV01") == ["A"]
    assert [r["vm_name"] for r in catalog.latest_per_vm(engine)] == ["A"]
    assert list(catalog.last_good_per_vm(engine, at)["vm_name"]) == ["A"]
    assert sorted(catalog.last_good_per_vm(engine, nights[1])["vm_name"]) == ["A", "B", "C"]  # before it was retired
    assert len(catalog.rows(engine)) == 6

    row(2, "B", status="running")  # listed again: probed in the next run
    assert catalog.standing(engine, "HV01") == ["A", "B"]
    latest = {r["vm_name"]: r for r in catalog.latest_per_vm(engine)}
    assert sorted(latest) == ["A", "B"] and latest["B"]["last_good"].replace(tzinfo=UTC) == nights[0]


def test_only_a_vm_selected_by_a_pattern_is_retired_when_the_host_no_longer_lists_it():
    from hyperv_backup.inventory import parse_inventory

    entry = parse_inventory("hosts:\n  - name: HV01\n    connection: c\n    vms: ['SQL*', DC01]\n    exclude: [SQL-TEST]\n",
                            "inventory.yaml").hosts[0]
    standing = ["DC01", "SQL01", "SQL02", "SQL-TEST", "WEB01"]
    # DC01 is named outright: its probe says it is missing, night after night; SQL-TEST and WEB01 are not this entry's
    assert entry.vanished(standing, ["SQL02"]) == ["SQL01"]
    assert entry.vanished(standing, ["DC01", "SQL01", "SQL02"]) == []


def test_the_mail_ledger_answers_many_keys_in_one_query_and_records_a_mail_all_or_nothing():
    engine = catalog.engine_for("sqlite://")
    now = datetime(2026, 11, 25, tzinfo=UTC)
    told = [f"rpo-breach/HV01/VM{i:04d}/never" for i in range(1200)]  # more than one chunk of the query
    catalog.record_mail(engine, ["rpo-breaches/abc", *told[:700]], "<m1>", "s", ["a@x"], now)
    assert catalog.mails_sent(engine, told) == set(told[:700])
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # one key already there: the whole record fails, nothing half-written
        catalog.record_mail(engine, ["rpo-breaches/def", told[699], told[700]], "<m2>", "s", ["a@x"], now)
    assert catalog.mails_sent(engine, ["rpo-breaches/def", told[700]]) == set()


@pytest.mark.parametrize("before", [None, 2], ids=["a new catalog", "a version-2 catalog"])
def test_workers_that_start_together_create_or_migrate_the_catalog_once(catalog_url, before):
    """Every host's first task of a night opens the catalog at the same moment: on a new catalog, or the first night
    after an upgrade, each would create the tables or add the columns. All of them must go on, one of them doing
    it, with one schema version recorded (found under the real scheduler: PostgreSQL failed the second CREATE TABLE
    of a host's select_vms, which lost a minute to its retry)."""
    import threading

    workers = 8
    barrier, engines, errors, found = threading.Barrier(workers), [], [], []
    if before:
        _version_2_catalog(sqlalchemy.create_engine(catalog_url))

    def open_catalog() -> None:
        engine = sqlalchemy.create_engine(catalog_url)
        engines.append(engine)
        barrier.wait()
        try:
            found.append(catalog.migrate(engine))
        except Exception as error:  # noqa: BLE001 (the assertion below names it)
            errors.append(error)

    threads = [threading.Thread(target=open_catalog) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with engines[0].connect() as db:
        versions = db.execute(sqlalchemy.select(catalog.schema_version.c.version)).scalars().all()
    assert versions == [catalog.MIGRATIONS[-1][0]]
    if before:  # one worker migrated (it found version 2), the others found it done; no row lost, none twice
        assert sorted(found) == [before] + [versions[0]] * (workers - 1)
        assert sorted((r["run_id"][:6], r["vm_name"], r["run_kind"]) for r in catalog.rows(engines[0])) == [
            ("manual", "A", "manual"), ("schedu", "A", "scheduled"), ("schedu", "B", "backfill")]
    for engine in engines:
        engine.dispose()
