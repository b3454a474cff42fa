"""Text for people: tables, the history graph, numbers and dates.

Pure functions from values to lines, so the CLI only chooses what to show and tests can
check the exact text.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence

from fedvc.objects import Commit, ObjectId, short_id


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> list[str]:
    """Columns padded to their widest cell; ``align`` has one 'l' or 'r' per column."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or "l" * len(headers)

    def line(row: list[str]) -> str:
        padded = (
            cell.rjust(width) if side == "r" else cell.ljust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        )
        return "  ".join(padded).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return number(value)
    return str(value)


def number(value: float | None) -> str:
    """Compact and exact enough to compare: 4 significant digits."""
    if value is None:
        return "-"
    return f"{value:.4g}"


def size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def date(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def metadata_brief(metadata: Mapping[str, object], width: int = 100) -> str:
    """Scalar metadata as ``key=value`` pairs on one line, nested values elided."""
    pairs = [
        f"{key}={number(value) if isinstance(value, float) else value}"
        for key, value in sorted(metadata.items())
        if isinstance(value, (str, int, float, bool)) or value is None
    ]
    nested = len(metadata) - len(pairs)
    text = " ".join(pairs) + (f" (+{nested} nested)" if nested else "")
    return text if len(text) <= width else text[: width - 3] + "..."


def summary_line(oid: ObjectId, commit: Commit, labels: Sequence[str] = ()) -> str:
    """``<short id> (labels) <first line of message>``, as in ``git log --oneline``."""
    decoration = f" ({', '.join(labels)})" if labels else ""
    subject = commit.message.splitlines()[0] if commit.message else "(no message)"
    return f"{short_id(oid)}{decoration} {subject}"


def graph_lines(
    entries: Sequence[tuple[ObjectId, Commit]], labels: Mapping[ObjectId, Sequence[str]]
) -> list[str]:
    """An ASCII history graph in the style of ``git log --graph``.

    Each column waits for one commit. A commit's first parent takes over its column, every
    further parent opens a new column (``\\``), and a column whose commit is already awaited
    elsewhere closes (``/``), which draws a round's octopus merge as a fan of branches.
    """
    columns: list[ObjectId] = []
    lines: list[str] = []
    for oid, commit in entries:
        if oid not in columns:
            columns.append(oid)
        here = columns.index(oid)
        marks = ["*" if i == here else "|" for i in range(len(columns))]
        lines.append(f"{' '.join(marks)}  {summary_line(oid, commit, labels.get(oid, ()))}")

        first = commit.parents[0] if commit.parents else None
        closes = first is None or first in columns
        if first is not None and not closes:
            columns[here] = first
        opened = [p for p in commit.parents[1:] if p not in columns]
        if opened:
            width = len(columns)
            columns.extend(opened)
            lines.append(_connector(len(columns), range(width), "\\", range(width, len(columns))))
        if closes:
            if len(columns) > 1:  # this column ends; every column right of it moves left
                lines.append(_connector(len(columns), range(here), "/", range(here, len(columns))))
            del columns[here]
    return lines


def _connector(width: int, keep: Iterable[int], slash: str, at: Iterable[int]) -> str:
    chars = [" "] * (2 * width)
    for i in keep:
        chars[2 * i] = "|"
    for i in at:
        chars[max(2 * i - 1, 0)] = slash
    return "".join(chars).rstrip()


def round_lines(record: Mapping[str, object]) -> list[str]:
    """A round merge's ``round`` metadata for a person: who took part with how many
    examples and what metrics, how their updates interfered, what was turned away.
    Raises KeyError, TypeError or ValueError on a record of another shape."""
    strategy = record["strategy"]
    participants = record["participants"]
    if not (isinstance(strategy, Mapping) and isinstance(participants, list)):
        raise TypeError("a round record needs a strategy mapping and a participant list")
    params = ", ".join(f"{k}={v}" for k, v in sorted(dict(strategy.get("params", {})).items()))
    names = sorted({m for p in participants for m in p.get("metrics", {})})
    rows = [
        [short_id(p["commit"]), p["key_id"] or "-", p["examples"]]
        + [number(p.get("metrics", {}).get(m)) for m in names]
        for p in participants
    ]
    lines = [
        f"merged with {strategy['name']}({params}): {len(participants)} updates, "
        f"{record['examples']} examples",
        "",
        *table(["update", "key", "examples", *names], rows, "llr" + "r" * len(names)),
    ]
    interference = record.get("interference")
    if isinstance(interference, Mapping):
        top = ", ".join(
            f"{layer['name']} {number(layer['score'])}"
            for layer in interference.get("top_layers", [])[:3]
        )
        lines += [
            "",
            f"interference score {number(interference.get('score'))}, mean cosine "
            f"{number(interference.get('mean_cosine'))}, sign conflicts "
            f"{number(interference.get('sign_conflict'))}; most conflicting: {top or '-'}",
        ]
    rejected = record.get("rejected") or []
    if not isinstance(rejected, list):
        raise TypeError("a round record's rejections must be a list")
    count = record.get("rejection_count", len(rejected))
    lines.append(f"rejected: {count}" if count else "rejected: none")
    lines += [
        f"  {r.get('key_id') or '-'} {short_id(r['commit']) if r.get('commit') else '-'}: "
        f"{r['reason']}: {r['detail']}"
        for r in rejected
    ]
    if record.get("strategy_state"):
        lines.append(f"strategy state: snapshot {short_id(str(record['strategy_state']))}")
    return lines
