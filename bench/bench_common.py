"""What the bench scripts share: their common options (`--backbone`, `--threads`) and the one way
they print results, a markdown table with a target and an ok column, and an exit status that says
whether every target was met."""

from __future__ import annotations

import argparse

import torch

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


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser with the options every bench script takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--backbone", default="toy")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line and apply `--threads` before any work is timed."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
