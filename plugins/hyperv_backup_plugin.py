"""The Airflow plugin of the Hyper-V backups: the fleet page (docs/fleet-page.md) in the UI's navigation, and the
backup runs' deadline at their host's window end (docs/alerts.md), which the scheduler can evaluate only if registered.

Airflow loads it from its plugins folder (this folder: `[core] plugins_folder`, or /opt/airflow/plugins in the
Docker deployment). The package `hyperv_backup/` beside it is not a plugin (.airflowignore).

It also imports the backup's task code (the DAG factory, its operators and steps, the WinRM hook and pywinrm).
Where Airflow loads its plugins as it starts (`[core] lazy_load_plugins = False`, as include/cluster.py and
docker-compose.yaml run it), the executor's workers then hold that code, and every task try, which is a fork of
a worker, starts with it imported instead of importing it again, and holds its worker slot for less
(bench.scheduler's worker-slot figure, README). The report's pandas and matplotlib are left to its own tasks. The price: a change to the code
under plugins/ takes a restart of Airflow's services, as any plugin's does.
"""

from airflow.plugins_manager import AirflowPlugin
from hyperv_backup import dag_factory, hooks, retrying  # noqa: F401  (preloaded for the task processes: see above)
from hyperv_backup.fleet_app import app
from hyperv_backup.rpo_dag import WindowEnd


class HyperVBackupPlugin(AirflowPlugin):
    name = "hyperv_backup"
    fastapi_apps = [{"app": app, "url_prefix": "/hyperv-backup", "name": "Hyper-V backup fleet"}]
    external_views = [{"name": "Hyper-V fleet", "href": "/hyperv-backup/fleet", "destination": "nav", "url_route": "hyperv-fleet",
                       "category": "browse"}]
    deadline_references = [WindowEnd]
