"""The report as files: charts (PNG), the per-VM table (CSV) and the HTML page; and the checkpoint
audit's mail. No Airflow import.

The same template renders twice: for the folder, images are referenced by file name; for the
e-mail, by Content-ID (`cid:` + the file name, the Content-ID `mailer.message` gives each
inline image). Jinja2 autoescapes, so a VM named `<script>` is text, not markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from jinja2 import Environment

from . import charts, hygiene, mailer
from .report import Report, page_tables


@dataclass
class Rendered:
    html: Path  # the page, images by file name
    email_html: str  # the same page, images by Content-ID
    images: list[Path]
    csv: Path

    @property
    def attachments(self) -> list[Path]:
        return [*self.images, self.csv]


def _missing(value) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _num(value, digits: int = 0) -> str:
    return "–" if _missing(value) else f"{value:,.{digits}f}"


def _duration(seconds) -> str:
    if _missing(seconds):
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _time(fmt: str):
    return lambda value: "" if _missing(value) else pd.Timestamp(value).strftime(fmt)


def environment() -> Environment:
    env = mailer.environment()
    env.filters.update(num=_num, duration=_duration, hm=_time("%H:%M"), ymdhm=_time("%Y-%m-%d %H:%M"),
                       text=lambda value: "" if _missing(value) else value)
    return env


def csv_frame(report: Report) -> pd.DataFrame:
    """The per-VM table as attached: times as ISO 8601 UTC, numbers unrounded."""
    frame = report.vms.copy()
    for column in ("started", "finished"):
        frame[column] = frame[column].map(lambda t: "" if _missing(t) else t.isoformat())
    return frame


def render(report: Report, folder: Path, prefix: str) -> Rendered:
    folder.mkdir(parents=True, exist_ok=True)
    images = {"gantt": charts.gantt(report.vms, report.windows), "trend": charts.trend(report.trend)}
    paths = {}
    for name, png in images.items():
        paths[name] = folder / f"{prefix}-{name}.png"
        paths[name].write_bytes(png)
    csv = folder / f"{prefix}-vms.csv"
    csv_frame(report).to_csv(csv, index=False)
    template = environment().get_template("report.html.j2")
    values = {"interval": report.interval, "summary": report.summary, "windows": report.windows.to_dict("records"),
              "share_targets": report.share_targets, "csv": csv.name, **page_tables(report)}
    html = folder / f"{prefix}.html"
    page = template.render(values, images={k: p.name for k, p in paths.items()})
    html.write_text(page, encoding="utf-8")
    # rendered once (a fleet's table is most of the work): the mail's copy refers to each image by Content-ID;
    # an attribute value is the only place `src="` can appear, since the page's text is escaped
    email_html = page
    for path in paths.values():
        email_html = email_html.replace(f'src="{path.name}"', f'src="cid:{path.name}"')
    return Rendered(html, email_html, list(paths.values()), csv)


def render_audit(summary: hygiene.AuditSummary) -> str:
    """The checkpoint audit's mail: per host, what was removed and what an administrator must do."""
    return environment().get_template("audit.html.j2").render(summary=summary, labels=hygiene.KIND_LABELS)
