"""The step timeline of an instance: an SVG Gantt chart, one bar per step, children nested."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from html import escape
from typing import Final

import attrs

from .._inspect import StepInfo
from ._source import Detail

__all__ = ["timeline"]

LABEL: Final = 200  # width of the label column
WIDTH: Final = 640  # width of the time axis
ROW: Final = 24
TOP: Final = 26  # room for the axis labels


def duration(seconds: float) -> str:
    """A short human duration: ``850 ms``, ``12.4 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 2 h``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@attrs.frozen
class _Row:
    label: str
    depth: int
    kind: str  # "step" or "child"
    svg: str


def _end(detail: Detail) -> float:
    record = detail.record
    if record.finished_at is not None:
        end = record.finished_at
    elif record.status == "running":
        end = max(detail.now, record.updated_at)
    else:  # suspended: up to when it suspended (its deadlines are listed beside)
        end = record.updated_at
    for step in detail.steps:
        end = max(end, step.finished_at.timestamp())
    for child in detail.children:
        end = max(end, _end(child))
    return end


def timeline(detail: Detail) -> str:
    """The SVG of *detail*'s steps (and its children's, nested), on one time axis."""
    start = detail.record.created_at
    for step in detail.steps:
        start = min(start, step.started_at.timestamp())
    span = max(_end(detail) - start, 1e-3)

    def x(at: float) -> float:
        return LABEL + (at - start) / span * WIDTH

    rows = list(_rows(detail, x, depth=0))
    height = TOP + ROW * max(len(rows), 1) + 8
    parts = [
        f'<svg class="gantt" viewBox="0 0 {LABEL + WIDTH + 40} {height}" role="img"'
        f' aria-label="step timeline" xmlns="http://www.w3.org/2000/svg"'
        f' data-steps="{sum(1 for r in rows if r.kind == "step")}">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse"'
        ' patternTransform="rotate(45)"><rect width="3" height="6" class="hatch"/>'
        "</pattern></defs>",
    ]
    for i in range(5):
        tx = LABEL + WIDTH * i / 4
        parts.append(
            f'<line class="grid" x1="{tx:.1f}" x2="{tx:.1f}" y1="{TOP - 6}" y2="{height - 4}"/>'
            f'<text class="tick" x="{tx:.1f}" y="{TOP - 10}" text-anchor="middle">'
            f"+{escape(duration(span * i / 4))}</text>"
        )
    if not rows:
        parts.append(f'<text class="empty" x="{LABEL}" y="{TOP + 16}">no step has run yet</text>')
    for i, row in enumerate(rows):
        y = TOP + i * ROW
        indent = 10 + 14 * row.depth
        label = (
            row.label
            if len(row.label) <= 26 - 2 * row.depth
            else row.label[: 24 - 2 * row.depth] + "…"
        )
        parts.append(
            f'<g class="row {row.kind}" transform="translate(0 {y})">'
            f'<rect class="band" x="0" y="0" width="{LABEL + WIDTH + 40}" height="{ROW}"/>'
            f'<text class="label" x="{indent}" y="{ROW / 2 + 4}"><title>{escape(row.label)}</title>'
            f"{escape(label)}</text>{row.svg}</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _bar(step: StepInfo, x0: float, x1: float, instance_id: str) -> str:
    width = max(x1 - x0, 2.0)
    took = duration(step.duration.total_seconds())
    tip = f"{step.key} · {step.state} · {took} · {step.attempts} attempt" + (
        "s" if step.attempts != 1 else ""
    )
    if step.error is not None:
        tip += f" · {step.error}"
    kind = "attempt" if step.state == "retried" else "step"
    svg = (
        f'<rect class="bar {kind} {step.state}" x="{x0:.1f}" y="5" width="{width:.1f}"'
        f' height="{ROW - 10}" rx="3" data-key="{escape(step.key)}"'
        f' data-instance="{escape(instance_id)}"><title>{escape(tip)}</title></rect>'
    )
    end = x0 + width
    if step.state != "completed":
        svg += f'<path class="fail-mark" d="M{end + 3:.1f} 8 l7 7 m0 -7 l-7 7"/>'
        end += 12
    note = took + (f" · \u00d7{step.attempts}" if step.attempts > 1 else "")
    if step.attempts > 1 and step.state == "completed":
        svg += f'<circle class="retry-mark" cx="{x0:.1f}" cy="{ROW / 2}" r="3"/>'
    svg += f'<text class="note" x="{end + 4:.1f}" y="{ROW / 2 + 4}">{escape(note)}</text>'
    return svg


def _rows(detail: Detail, x: Callable[[float], float], *, depth: int) -> Iterator[_Row]:
    by_key: dict[str, list[StepInfo]] = {}
    for step in detail.steps:
        by_key.setdefault(step.key, []).append(step)
    iid = detail.record.instance_id
    for key, steps in by_key.items():
        yield _Row(
            label=key,
            depth=depth,
            kind="step",
            svg="".join(
                _bar(s, x(s.started_at.timestamp()), x(s.finished_at.timestamp()), iid)
                for s in steps
            ),
        )
    for timer in detail.history.timers:
        if timer.kind == "sleep":
            # A durable sleep: a dashed line from when it was set (unknown: the previous
            # step's end) to its deadline, drawn as a marker at the deadline.
            at = min(x(timer.deadline.timestamp()), LABEL + WIDTH)
            state = "fired" if timer.fired else "pending"
            yield _Row(
                label=f"⏱ {timer.key}",
                depth=depth,
                kind="timer",
                svg=f'<path class="timer-mark {state}" d="M{at:.1f} 5 l6 7 l-6 7 l-6 -7 z">'
                f"<title>{escape(timer.key)} · {state}</title></path>",
            )
    for child in detail.children:
        record = child.record
        x0 = x(record.created_at)
        end = _end(child)
        width = max(x(end) - x0, 2.0)
        yield _Row(
            label=record.instance_id.rsplit("/", 1)[-1],
            depth=depth,
            kind="child",
            svg=f'<rect class="bar child {record.status}" x="{x0:.1f}" y="7" width="{width:.1f}"'
            f' height="{ROW - 14}" rx="5" data-instance="{escape(record.instance_id)}">'
            f"<title>{escape(record.instance_id)} · {record.status}</title></rect>"
            f'<text class="note" x="{x0 + width + 4:.1f}" y="{ROW / 2 + 4}">'
            f"{record.status}</text>",
        )
        yield from _rows(child, x, depth=depth + 1)
