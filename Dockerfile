# The project's Airflow image: the official Airflow 3.3.2 image with what the DAG files import
# (the WinRM, SMTP, standard and Celery providers, pywinrm with NTLM, pandas, matplotlib, the
# PostgreSQL drivers) and the project's dags/, plugins/ and include/. Every Airflow service of
# docker-compose.yaml runs this one image, so each has what the DAG files need.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt /opt/airflow/requirements.txt
# Airflow's own version pinned alongside, as the official image's documentation asks, so that pip
# never replaces the Airflow the image was built with.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/airflow/requirements.txt

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
COPY --chown=airflow:root include /opt/airflow/include
ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow \
    HYPERV_BACKUP_INVENTORY=/opt/airflow/config/inventory.yaml
