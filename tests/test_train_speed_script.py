"""bench/train_speed.py's FLOP count of a training step, on the tiny backbone on the CPU."""

import pytest

from omnipersona.trainer import TrainRecipe

from .conftest import load_bench_script


@pytest.fixture(scope="module")
def train_speed():
    return load_bench_script("train_speed")


@pytest.mark.parametrize("full_finetune", [False, True])
def test_step_flops_include_attention(train_speed, tiny, concept_data, monkeypatch, full_finetune):
    import bench_common  # the module train_speed counts with (bench/ is on sys.path now)

    lengths = []
    pack = train_speed.pack_samples

    def recording_pack(*args, **kwargs):
        seq = pack(*args, **kwargs)
        lengths.append(seq.length)
        return seq

    monkeypatch.setattr(train_speed, "pack_samples", recording_pack)
    recipe = TrainRecipe()
    counted, _ = train_speed.step_flops(tiny, concept_data, recipe, full_finetune=full_finetune)
    # The same step without the formulas for the CPU attention kernels: torch alone counts no attention.
    monkeypatch.setattr(bench_common, "CPU_ATTENTION_FLOPS", {})
    without, _ = train_speed.step_flops(tiny, concept_data, recipe, full_finetune=full_finetune)

    assert len(lengths) == 2 and lengths[0] == lengths[1]
    L = lengths[0]
    llm = tiny.config.llm
    heads, layers = llm["num_attention_heads"], llm["num_hidden_layers"]
    head_dim = llm["hidden_size"] // heads
    # One dense [L, L] SDPA call per MoT layer over the packed sequence: q @ k^T and p @ v forward,
    # five such products backward (the concept rows need gradients through every layer), each
    # 2 * heads * L * L * head_dim FLOPs.
    product = 2 * heads * L * L * head_dim
    assert counted - without == layers * (2 + 5) * product
