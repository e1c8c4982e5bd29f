"""The one way the bench scripts print their results: a markdown table with a target and an
ok column, and an exit status that says whether every target was met."""

from __future__ import annotations

Row = tuple[str, str, str, bool]  # (measure, value, target, ok)


def print_table(header: str, rows: list[Row]) -> int:
    """Print `header` and the rows; 0 if every row is ok, else 1."""
    width = max(len(r[0]) for r in rows)
    print(header)
    print(f"| {'measure':{width}} | {'value':>14} | {'target':8} | ok |")
    print(f"|{'-' * (width + 2)}|{'-' * 16}|{'-' * 10}|----|")
    for name, value, target, ok in rows:
        print(f"| {name:{width}} | {value:>14} | {target:8} | {'yes' if ok else 'NO'} |")
    return 0 if all(ok for *_, ok in rows) else 1
