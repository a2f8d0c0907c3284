"""The demo's report as stakeholders get it: the e-mail a real SMTP server received, parsed back,
and the HTML page opened in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import base64
import csv
import email
import re
import shutil
import sqlite3
import subprocess
from email import policy

import matplotlib.image
import numpy as np
import pytest
from hyperv_backup.charts import MODE_COLOURS


def _catalog(out):
    with sqlite3.connect(out / "catalog.sqlite") as db:
        return db.execute("SELECT host, vm_name, status, bytes_copied FROM vm_backups ORDER BY host, vm_name").fetchall()


def _mail(out):
    messages = sorted((out / "mail").glob("*.eml"))
    assert len(messages) == 1, "one report, one e-mail"
    return email.message_from_bytes(messages[0].read_bytes(), policy=policy.default)


def test_the_subject_tells_the_truth(demo):
    out, stdout = demo
    rows = _catalog(out)
    succeeded = sum(1 for r in rows if r[2] == "succeeded")
    failed = sum(1 for r in rows if r[2] == "failed")
    subject = _mail(out)["Subject"]
    assert re.fullmatch(r"Hyper-V backups \d+ h to \d{4}-\d\d-\d\d \d\d:\d\d UTC: (.*)", subject)
    assert f": {succeeded}/{len(rows)} succeeded" in subject
    assert (f"{failed} failed" in subject) == (failed > 0)
    assert f"mail: {subject}" in stdout


def test_the_mail_is_a_standard_inline_image_mail(demo):
    """mixed [ alternative [ text/plain, related [ text/html, image/png inline ] ], text/csv attachment ]."""
    out, _ = demo
    message = _mail(out)
    assert message.get_content_type() == "multipart/mixed" and message["To"] == "backup-reports@example.test"
    alternative, *attachments = message.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, related = alternative.get_payload()
    assert plain.get_content_type() == "text/plain" and "succeeded" in plain.get_content() and "<" not in plain.get_content()
    assert related.get_content_type() == "multipart/related"
    html, *images = related.get_payload()
    assert html.get_content_type() == "text/html" and len(images) == 2
    assert {(i.get_content_type(), i.get_content_disposition()) for i in images} == {("image/png", "inline")}
    assert [(a.get_content_type(), a.get_content_disposition()) for a in attachments] == [("text/csv", "attachment")]


def test_the_charts_are_inline_images_the_html_references(demo):
    out, _ = demo
    message = _mail(out)
    html = message.get_body(("html",)).get_content()
    parts = {part["Content-ID"].strip("<>"): part for part in message.walk() if part["Content-ID"]}
    referenced = re.findall(r'src="cid:([^"]+)"', html)
    assert sorted(referenced) == sorted(name for name in parts if name.endswith(".png")) and len(referenced) == 2
    for name in referenced:
        assert parts[name].get_payload(decode=True).startswith(b"\x89PNG\r\n\x1a\n"), name
    assert "http" not in "".join(re.findall(r'<img[^>]*>', html)), "images travel with the mail, never as links"


def test_the_csv_attachment_matches_the_catalog(demo):
    out, _ = demo
    attachment = next(p for p in _mail(out).iter_attachments() if p.get_filename().endswith("-vms.csv"))
    table = list(csv.DictReader(attachment.get_payload(decode=True).decode("utf-8").splitlines()))
    mailed = sorted((r["host"], r["vm_name"], r["status"], round(float(r["gb"]) * 1024**3)) for r in table)
    assert mailed == [(h, v, s, b or 0) for h, v, s, b in _catalog(out)]
    assert {p.suffix for p in (out / "reports").iterdir()} >= {".html", ".png", ".csv"}


def _charts_drawn(page_uri: str, shot) -> None:
    """Open a page in headless Chromium; its chart area holds the online and checkpoint colours."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400",
                    f"--screenshot={shot}", page_uri], check=True, capture_output=True, timeout=120)
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)
    chart = pixels[250:900]  # the window chart sits below the headline tiles
    assert chart.std() > 20, "the chart area is blank"
    for mode in ("online", "checkpoint"):
        colour = np.array([int(MODE_COLOURS[mode][i:i + 2], 16) for i in (1, 3, 5)])
        matching = (np.abs(chart - colour).sum(axis=2) < 30).sum()
        assert matching > 300, f"no {mode} bars in the screenshot ({matching} pixels)"


def test_the_report_page_renders_its_charts_in_chromium(demo, tmp_path):
    out, _ = demo
    page = next(p for p in (out / "reports").glob("*.html") if not p.name.endswith(".mail.html"))
    _charts_drawn(page.as_uri(), tmp_path / "report.png")


def test_the_mail_renders_its_cid_images_in_chromium(demo, tmp_path):
    """As a mail client shows it: every cid: reference resolved to the image part that carries that Content-ID."""
    out, _ = demo
    message = _mail(out)
    parts = {part["Content-ID"].strip("<>"): part for part in message.walk() if part["Content-ID"]}
    html = message.get_body(("html",)).get_content()
    def inline(match: re.Match) -> str:
        part = parts[match.group(1)]
        return f'src="data:{part.get_content_type()};base64,{base64.b64encode(part.get_payload(decode=True)).decode()}"'

    shown = re.sub(r'src="cid:([^"]+)"', inline, html)
    assert "cid:" not in shown
    page = tmp_path / "mail.html"
    page.write_text(shown, encoding="utf-8")
    _charts_drawn(page.as_uri(), tmp_path / "mail.png")
