"""The Airflow preflight DAG of the Hyper-V backups: run it by hand before a host's first night.

Thin on purpose: the inventory is read when the DAG runs, so a wrong inventory does not stop this
DAG from loading.
"""

from hyperv_backup.preflight_dag import build_preflight_dag

hyperv_backup_preflight = build_preflight_dag()
