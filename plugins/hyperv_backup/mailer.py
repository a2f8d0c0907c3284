"""E-mail through Airflow's SMTP provider (connection `smtp_default`), at most once per message.

Every message has a key (which report, which audit run); the `report_mails` ledger in the
catalog database records it once sent, so a retry of a task that sent its mail and then
failed finds it there and does not send it twice. The Message-ID derives from the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import catalog
from .operators import catalog_engine


def send_once(key: str, subject: str, html: str, recipients: list[str], files: Sequence[Path] = ()) -> str:
    """Send unless the ledger has `key`; `files` are attached, each with Content-ID <its file name>
    (the provider's way), so the HTML can show images inline as `cid:<file name>`."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    engine = catalog_engine()
    sent = catalog.mail_sent(engine, key)
    if sent:
        return f"already sent at {sent['sent_at']} as {sent['message_id']}; not sending it twice"
    message_id = f"<{key.replace('/', '.').replace(':', '')}@hyperv-backup>"
    with SmtpHook(smtp_conn_id="smtp_default") as smtp:
        smtp.send_email_smtp(to=recipients, subject=subject, html_content=html, files=[str(f) for f in files],
                             mime_subtype="related", custom_headers={"Message-ID": message_id})
    catalog.record_mail(engine, key, message_id, subject, recipients, datetime.now(UTC))
    return f"sent to {', '.join(recipients)}: {subject}"
