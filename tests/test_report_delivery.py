"""The demo's report as stakeholders get it: the e-mail a real SMTP server received, parsed back,
and the HTML page opened in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

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
    assert re.fullmatch(r"Hyper-V backups 24 h to \d{4}-\d\d-\d\d \d\d:\d\d UTC: (.*)", subject)
    assert f": {succeeded}/{len(rows)} succeeded" in subject
    assert (f"{failed} failed" in subject) == (failed > 0)
    assert f"mail: {subject}" in stdout


def test_the_charts_are_inline_images_the_html_references(demo):
    out, _ = demo
    message = _mail(out)
    assert message.get_content_type() == "multipart/related"
    assert message["To"] == "backup-reports@example.test"
    html = message.get_body(("html",)).get_content()
    parts = {part["Content-ID"].strip("<>"): part for part in message.iter_attachments() if part["Content-ID"]}
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


def test_the_report_page_renders_its_charts_in_chromium(demo, tmp_path):
    out, _ = demo
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    page = next(p for p in (out / "reports").glob("*.html") if not p.name.endswith(".mail.html"))
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)
    chart = pixels[250:900]  # the window chart sits below the headline tiles
    assert chart.std() > 20, "the chart area is blank"
    for mode in ("online", "checkpoint"):
        colour = np.array([int(MODE_COLOURS[mode][i:i + 2], 16) for i in (1, 3, 5)])
        matching = (np.abs(chart - colour).sum(axis=2) < 30).sum()
        assert matching > 300, f"no {mode} bars in the screenshot ({matching} pixels)"
