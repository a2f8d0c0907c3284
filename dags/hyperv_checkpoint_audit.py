"""The Airflow DAG that audits Hyper-V checkpoint hygiene daily over the whole fleet (opt-in remediation).

Thin on purpose: parsing reads nothing; the audit reads the inventory when it runs.
"""

from hyperv_backup.audit_dag import build_audit_dag

hyperv_checkpoint_audit = build_audit_dag()
