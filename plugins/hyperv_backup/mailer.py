"""E-mail through Airflow's SMTP provider (connection `smtp_default`), at most once per message.

Every message has a key (which report, which audit run); the `report_mails` ledger in the
catalog database records it once sent, so a retry of a task that sent its mail and then
failed finds it there and does not send it twice. The Message-ID derives from the key.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from html.parser import HTMLParser
from pathlib import Path

from . import catalog
from .settings import catalog_engine

TEMPLATES = Path(__file__).resolve().parents[2] / "include" / "templates"
# The most rows a mail's table of VMs lists; the rest are counted, and the fleet page or the CSV has them. No one reads
# 2,000 rows in a mail, and mail clients clip long messages (Gmail past 102 KB).
TABLE_ROWS = 100


def environment():
    """The project's templates (include/templates/), autoescaped, so a VM named `<script>` is text."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.globals["TABLE_ROWS"] = TABLE_ROWS
    return env


def page(template: str, **values) -> str:
    """A mail's page from its template, by Jinja alone: an alert sent from the triggerer does without the report's
    renderer (pandas, matplotlib)."""
    return environment().get_template(template).render(**values)


def message(subject: str, html: str, sender: str, recipients: list[str], message_id: str, files: Sequence[Path] = ()) -> EmailMessage:
    """The standard shape of a mail with inline images, built with Python's `email` package:

        multipart/mixed
          multipart/alternative
            text/plain                     (the same content, for clients that show no HTML)
            multipart/related
              text/html                    (images as cid:<file name>)
              image/png, inline, Content-ID <file name>   (each PNG of `files`)
          text/csv (or other), attachment  (every other file)
    """
    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = subject, sender, ", ".join(recipients)
    mail["Message-ID"], mail["Date"] = message_id, formatdate(localtime=False)
    mail.set_content(text_of(html))
    mail.add_alternative(html, subtype="html")
    page = mail.get_payload()[1]
    for path in files:
        if path.suffix.lower() == ".png":
            page.add_related(path.read_bytes(), maintype="image", subtype="png", cid=f"<{path.name}>", disposition="inline",
                             filename=path.name)
    for path in files:
        if path.suffix.lower() != ".png":
            kind, _ = mimetypes.guess_type(path.name)
            maintype, subtype = (kind or "application/octet-stream").split("/")
            mail.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return mail


def send_once(key: str, subject: str, html: str, recipients: list[str], files: Sequence[Path] = (), also: Sequence[str] = ()) -> str:
    """Send unless the ledger has `key`. PNG files are shown inline (the HTML refers to them as
    `cid:<file name>`), the others attached. Sent through the `smtp_default` connection's server,
    with its TLS and login settings (the provider's SmtpHook). The ledger records the mail under `key` and
    under each of `also` (what the mail told, such as each RPO breach), so none is told twice."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    engine = catalog_engine()
    sent = catalog.mail_sent(engine, key)
    if sent:
        return f"already sent at {sent['sent_at']} as {sent['message_id']}; not sending it twice"
    message_id = f"<{key.replace('/', '.').replace(':', '')}@hyperv-backup>"
    with SmtpHook(smtp_conn_id="smtp_default") as smtp:
        sender = smtp.from_email
        if not sender:
            raise ValueError('the smtp_default connection names no sender: set "from_email" in its extra')
        mail = message(subject, html, sender, recipients, message_id, files)
        # The provider builds its own MIME (every file an octet-stream attachment) and has no public call for a
        # message built elsewhere; its connected client sends this one, as its own send_email_smtp does.
        smtp._smtp_client.send_message(mail, from_addr=sender, to_addrs=recipients)
    catalog.record_mail(engine, [key, *also], message_id, subject, recipients, datetime.now(UTC))
    return f"sent to {', '.join(recipients)}: {subject}"


class _Text(HTMLParser):
    """The text of an HTML page, one line per block, table cells separated by ' | '."""

    BLOCKS = frozenset({"p", "div", "h1", "h2", "h3", "h4", "li", "tr", "br", "table", "section", "title"})

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = [""]
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script", "head"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.lines.append("")
        elif tag in ("td", "th") and self.lines[-1].strip():
            self.lines[-1] += " | "
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.lines[-1] += f"[{alt}]"

    def handle_endtag(self, tag):
        if tag in ("style", "script", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.lines.append("")

    def handle_data(self, data):
        """Whitespace collapsed to one space, kept at the edges: `run <code>x</code> of` reads "run x of"."""
        if not self.skip and data:
            text = " ".join(data.split())
            self.lines[-1] += (" " if data[0].isspace() else "") + text + (" " if text and data[-1].isspace() else "")


def text_of(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    lines = [" ".join(line.split()) for line in parser.lines]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1])).strip() + "\n"
