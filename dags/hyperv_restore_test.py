"""The Airflow restore-test DAG of the Hyper-V backups: boots a copy of each VM's backup, isolated, weekly.

Thin on purpose: the inventory is read when the DAG runs, so a wrong inventory does not stop this
DAG from loading.
"""

from hyperv_backup.restore_dag import build_restore_test_dag

hyperv_restore_test = build_restore_test_dag()
