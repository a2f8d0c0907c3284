"""The Airflow report DAG of the Hyper-V backups: daily, and after every backup run (the catalog Asset).

Thin on purpose: parsing reads nothing; the report reads the inventory (recipients, windows, RPOs)
when it runs, so a wrong inventory does not stop this DAG from loading.
"""

from hyperv_backup.report_dag import build_report_dag

hyperv_backup_report = build_report_dag()
