"""The Airflow report DAG of the Hyper-V backups: daily, and after every backup run (the catalog Asset).

Thin on purpose: parsing reads the inventory (recipients, windows, RPOs); no network, no database.
"""

from hyperv_backup.inventory import load_inventory
from hyperv_backup.report_dag import build_report_dag

hyperv_backup_report = build_report_dag(load_inventory())
