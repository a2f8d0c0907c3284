"""The Airflow backup DAGs: one per host of the inventory (include/inventory.yaml or $HYPERV_BACKUP_INVENTORY).

Thin on purpose: parsing reads one YAML file and builds DAGs; no network, no database.
A wrong inventory raises one import error that names the file, the line and the key.
"""

from hyperv_backup.dag_factory import build_dag
from hyperv_backup.inventory import load_inventory

_inventory = load_inventory()
for _entry in _inventory.hosts:
    globals()[f"hyperv_backup_{_entry.name.lower()}"] = build_dag(_entry, _inventory)
