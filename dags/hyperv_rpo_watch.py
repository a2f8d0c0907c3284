"""The Airflow DAG that mails each new breach of a VM's RPO once, between the reports (docs/alerts.md).

Thin on purpose: the inventory is read when the DAG runs, so a wrong inventory does not stop this
DAG from loading.
"""

from hyperv_backup.rpo_dag import build_rpo_watch_dag

hyperv_rpo_watch = build_rpo_watch_dag()
