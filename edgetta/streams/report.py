"""Human-readable lines about a run: counts with the right plural, the top skip reasons."""

from __future__ import annotations

from edgetta.streams.records import Summary


def plural(n: int, word: str) -> str:
    """``plural(1, "update")`` -> "1 update"; ``plural(2, "backward pass")`` -> "2 backward passes"."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}{'es' if word.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def summary_line(summary: Summary) -> str:
    """One line: method, samples, skipped, accuracy, updates, backward passes, resets, time."""
    acc = "n/a (no labels)" if summary.accuracy is None else f"{summary.accuracy:.4f}"
    return (
        f"{summary.method}: {plural(summary.samples, 'sample')}, {summary.skipped} skipped, accuracy {acc}, "
        f"{plural(summary.updates, 'update')}, {plural(summary.backward_passes, 'backward pass')}, "
        f"{plural(summary.resets, 'reset')}, {summary.seconds:.1f} s"
    )


def skip_lines(summary: Summary, top: int = 5) -> list[str]:
    """The most common skip reasons with their counts, most common first (empty when none)."""
    reasons = list(summary.skip_reasons.items())
    lines = [f"  {count} x {reason}" for reason, count in reasons[:top]]
    if len(reasons) > top:
        rest = sum(count for _, count in reasons[top:])
        lines.append(f"  {rest} x other reasons ({len(reasons) - top} more)")
    return lines
