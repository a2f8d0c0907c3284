-- The backup catalog's own database, beside Airflow's metadata (docker-compose.yaml's AIRFLOW_CONN_HYPERV_BACKUP_CATALOG).
CREATE DATABASE hyperv_catalog;
