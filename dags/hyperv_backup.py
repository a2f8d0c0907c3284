"""The Airflow backup DAGs: one per host of the inventory (include/inventory.yaml or $HYPERV_BACKUP_INVENTORY).

Thin on purpose: parsing reads one YAML file and builds DAGs; no network, no database, and no
WinRM, pandas or matplotlib (the tasks import what they use, or find it preloaded by the plugin,
plugins/hyperv_backup_plugin.py). A task start builds only its own host's DAG (Airflow's parsing
context names it), not the whole fleet's.
A wrong inventory raises one import error that names the file, the line and the key.
"""

from airflow.sdk import get_parsing_context
from hyperv_backup.dag_factory import build_dag, dag_id
from hyperv_backup.inventory import load_inventory

_inventory = load_inventory()
_wanted = get_parsing_context().dag_id
for _entry in _inventory.hosts:
    if _wanted is None or _wanted == dag_id(_entry):
        globals()[dag_id(_entry)] = build_dag(_entry, _inventory)
