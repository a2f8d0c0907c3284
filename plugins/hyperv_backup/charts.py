"""The report's charts, drawn headless with matplotlib (Agg) into PNG bytes. No Airflow import."""

from __future__ import annotations

import io

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .facts import Status

MODE_COLOURS = {"online": "#2e7d32", "checkpoint": "#1565c0", "saved": "#ef6c00", "offline": "#757575"}
FAILED = "#c62828"
WINDOW = "#fff3c4"
OPEN = "#616e7c"


DPI = 110
CHAR_INCHES = 0.075  # the width of an average character of the 8-point labels, with a margin of error


def _figure(width: float, height: float, left: float, bottom: float, top: float = 0.4, right: float = 0.25):
    """A figure with one axis and its margins in inches (the labels' room, reckoned from their length), so that it
    is drawn once: a layout engine measures every label in a draw of its own first, which doubled the time.
    A Figure of its own, not pyplot's: no global state, nothing to close, pyplot not imported."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


ROW_PER_VM_UP_TO = 60  # beyond this many jobs a row per VM is unreadable: one row per host, one segment per VM


def job_spans(vms: pd.DataFrame) -> pd.DataFrame:
    """The jobs to draw: those that started, each with an end. A job with no recorded end (its last answer
    was lost, or it still ran) is drawn up to the latest moment the report knows of, marked `open`."""
    ran = vms.dropna(subset=["started"]).copy()
    ran["open"] = ran["finished"].isna()
    if ran.empty:
        return ran
    earliest, latest = ran["started"].min(), pd.concat([ran["finished"], ran["started"]]).max()
    least = max(pd.Timedelta(minutes=5), (latest - earliest) * 0.02)  # an open job that started last still shows
    ran["finished"] = ran["finished"].fillna((ran["started"] + least).clip(lower=latest))
    return ran


def legend_entries(ran: pd.DataFrame, window_drawn: bool) -> list[Patch]:
    """Only what the chart shows: the modes drawn, failed and open jobs if any, the window if one is shaded."""
    drawn = set(ran["mode"].fillna(ran["predicted_mode"]))
    entries = [Patch(color=c, label=m) for m, c in MODE_COLOURS.items() if m in drawn]
    if (ran["status"] != Status.SUCCEEDED).any():
        entries.append(Patch(facecolor="white", edgecolor=FAILED, hatch="///", label="failed"))
    if ran["open"].any():
        entries.append(Patch(facecolor="white", edgecolor=OPEN, linestyle="--", label="no end recorded"))
    if window_drawn:
        entries.append(Patch(color=WINDOW, label="planned window"))
    return entries


def _bars(axis, lanes: pd.Series, starts: pd.Series, ends: pd.Series, half_height=0.3, zorder=2, **style) -> None:
    """Many bars as one collection: a fleet's 2,000 jobs draw as fast as a handful (one Rectangle each would not)."""
    left, right = mdates.date2num(starts.dt.tz_convert("UTC").dt.tz_localize(None)), mdates.date2num(
        ends.dt.tz_convert("UTC").dt.tz_localize(None))
    low, high = np.asarray(lanes - half_height, dtype=float), np.asarray(lanes + half_height, dtype=float)
    boxes = np.stack([np.column_stack(corner) for corner in ((left, low), (left, high), (right, high), (right, low))], axis=1)
    axis.add_collection(PolyCollection(boxes, zorder=zorder, **style), autolim=True)


def gantt(vms: pd.DataFrame, windows: pd.DataFrame) -> bytes:
    """One bar per VM job, grouped by host, coloured by mode; failed jobs red-edged and hatched; the planned window shaded.

    A large fleet gets one row per host, each VM's job a segment of it, so the chart stays legible. The bars
    are drawn as one collection per style (done, failed, no end recorded), not one artist per job.
    """
    ran = job_spans(vms)
    hosts = list(dict.fromkeys(ran["host"]))
    per_vm = len(ran) <= ROW_PER_VM_UP_TO
    height = max(2.2, 0.32 * (len(ran) if per_vm else len(hosts)) + (0.5 * len(hosts) if per_vm else 0) + 1.2)
    longest = max((len(f"{host} · {name}") for host, name in zip(ran["host"], ran["vm_name"], strict=True)), default=0) \
        if per_vm else max((len(f"{host} (0000 VMs)") for host in hosts), default=0)
    figure, axis = _figure(10, height, left=min(4.5, 0.25 + CHAR_INCHES * longest), bottom=0.75)
    if ran.empty:
        axis.text(0.5, 0.5, "no backup job ran in this interval", ha="center", va="center", transform=axis.transAxes)
        axis.set_axis_off()
        return _png(figure)
    labels, lanes, tops, shaded = [], pd.Series(0, index=ran.index), [0], []
    by_host = dict(tuple(ran.sort_values("started", kind="stable").groupby("host", sort=False)))  # one pass, not one per host
    planned_by_host = windows.drop_duplicates("host").set_index("host")
    for host in hosts:
        mine = by_host[host]
        y, top = tops[-1], tops[-1] + (len(mine) if per_vm else 1)
        if host in planned_by_host.index and pd.notna(planned_by_host.at[host, "planned_start"]):
            planned = planned_by_host.loc[host]
            shaded.append((planned["planned_start"], planned["planned_end"], y - 0.5, top - 0.5))
        lanes[mine.index] = range(y, top) if per_vm else y
        labels += [f"{host} · {name}" for name in mine["vm_name"]] if per_vm else [f"{host} ({len(mine)} VMs)"]
        tops.append(top)
    # every host's window, window end and separator drawn at once: a collection each, not artists per host
    if shaded:
        starts, ends, lows, highs = (pd.Series(column) for column in zip(*shaded, strict=True))
        _bars(axis, (lows + highs) / 2, pd.to_datetime(starts, utc=True), pd.to_datetime(ends, utc=True),
              half_height=(highs - lows) / 2, facecolors=WINDOW, zorder=0)
        axis.vlines(mdates.date2num(pd.to_datetime(ends, utc=True).dt.tz_localize(None)), lows, highs, colors="#b8860b",
                    linestyles="--", zorder=1)
    axis.hlines([top - 0.5 for top in tops[1:]], 0, 1, transform=axis.get_yaxis_transform(), colors="#cccccc", linewidth=0.8)
    window_drawn = bool(shaded)
    for (failed, open_end), jobs in ran.groupby([ran["status"] != Status.SUCCEEDED, ran["open"]]):
        colours = jobs["mode"].fillna(jobs["predicted_mode"]).map(MODE_COLOURS).fillna("#9e9e9e")
        _bars(axis, lanes[jobs.index], jobs["started"], jobs["finished"], facecolors=list(colours),
              edgecolors=OPEN if open_end else FAILED if failed else "white", linewidths=1.5 if failed or open_end else 0.3,
              linestyles="--" if open_end else "-", hatch="///" if failed else None)
    axis.autoscale_view()
    axis.xaxis_date(tz="UTC")
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz="UTC"))
    axis.set_xlabel("UTC")
    axis.set_title("Backup jobs against the planned window" if window_drawn else "Backup jobs", loc="left")
    figure.legend(handles=legend_entries(ran, window_drawn), loc="lower center", ncol=7, fontsize=8, frameon=False)
    return _png(figure)


def trend(table: pd.DataFrame) -> bytes:
    """Success rate (line) and the longest host window (bars) per day, over the last 30 days."""
    figure, bars = _figure(10, 3.2, left=0.7, bottom=0.45, right=0.7)
    days = table["day"].dt.tz_localize(None)
    bars.bar(days, table["window_h"].fillna(0), color="#90caf9", width=0.8, label="longest window (h)")
    bars.set_ylabel("window (hours)")
    rate = bars.twinx()
    rate.plot(days, table["success_rate"] * 100, color="#2e7d32", marker="o", markersize=3, label="succeeded (%)")
    rate.set_ylim(0, 105)
    rate.set_ylabel("succeeded (%)")
    bars.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    bars.set_title("Last 30 days", loc="left")
    handles = bars.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    bars.legend(handles=handles, loc="lower left", fontsize=8, frameon=False)
    return _png(figure)
