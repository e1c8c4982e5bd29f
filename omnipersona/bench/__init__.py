"""OmniPBench-style benchmark on the toy world: 20 concepts from a seed, the paper's metrics
(Rec, VQA, Gen, PARG, Edit) with exact ground truth, the paper's rows (base + text description,
OmniPersona, and its ablations). See `run` for the definitions."""

from .cases import BenchConcept, EditCase, build_cases
from .report import markdown_table, write_report
from .run import METRICS, ROWS, BenchResult, Row, evaluate_concept, run_bench

__all__ = [
    "METRICS", "ROWS", "BenchConcept", "BenchResult", "EditCase", "Row", "build_cases", "evaluate_concept",
    "markdown_table", "run_bench", "write_report",
]
