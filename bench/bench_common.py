"""What the bench scripts share: their common options (`--backbone`, `--threads`), the one way
they print results, a markdown table with a target and an ok column, and an exit status that says
whether every target was met, and the one way they count FLOPs (`count_flops`, which also counts
attention on the CPU)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

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


# FlopCounterMode has no formula for the CPU flash-attention kernels, which the model's SDPA call
# (bool mask + enable_gqa) dispatches to on the CPU: without these a count on the CPU (gpu_step.py
# --dry-run, train_speed.py) would leave attention out. The CUDA kernels (efficient, flash, cuDNN)
# are counted by torch itself.
def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}


def count_flops(fn: Callable[[], Any], layers: nn.ModuleList | None = None) -> dict[str, Any]:
    """FLOPs that `fn()` executes (matmuls and attention; elementwise work is not counted), the part
    of them in the forward calls of `layers` (0 without them), and the total per aten op.

    The layer part is read from forward hooks, which fire only when a layer module is called: the
    recompute of a checkpointed layer calls its bound `forward` directly (see gpu_step.py
    `activation_checkpointing`), so the layer part is the forward pass alone, i.e. exactly what
    checkpointing executes a second time."""
    in_layers = 0
    starts: dict[nn.Module, int] = {}
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        def before(layer: nn.Module, args: Any) -> None:
            starts[layer] = counter.get_total_flops()

        def after(layer: nn.Module, args: Any, output: Any) -> None:
            nonlocal in_layers
            in_layers += counter.get_total_flops() - starts.pop(layer)

        handles = [h for layer in (layers or ())
                   for h in (layer.register_forward_pre_hook(before), layer.register_forward_hook(after))]
        try:
            fn()
        finally:
            for h in handles:
                h.remove()
    by_op = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": counter.get_total_flops(), "layer_forward_flops": in_layers, "by_op": by_op}
