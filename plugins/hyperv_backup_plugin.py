"""The Airflow plugin of the Hyper-V backups: the fleet page (docs/fleet-page.md) in the UI's navigation, and the
backup runs' deadline at their host's window end (docs/alerts.md), which the scheduler can evaluate only if registered.

Airflow loads it from its plugins folder (this folder: `[core] plugins_folder`, or /opt/airflow/plugins in the
Docker deployment). The package `hyperv_backup/` beside it is not a plugin (.airflowignore).
"""

from airflow.plugins_manager import AirflowPlugin
from hyperv_backup.fleet_app import app
from hyperv_backup.rpo_dag import WindowEnd


class HyperVBackupPlugin(AirflowPlugin):
    name = "hyperv_backup"
    fastapi_apps = [{"app": app, "url_prefix": "/hyperv-backup", "name": "Hyper-V backup fleet"}]
    external_views = [{"name": "Hyper-V fleet", "href": "/hyperv-backup/fleet", "destination": "nav", "url_route": "hyperv-fleet",
                       "category": "browse"}]
    deadline_references = [WindowEnd]
