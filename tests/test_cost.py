"""benchmarks/cost.py (Table 4): what it counts, on the micro preset (seconds)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from colormae import make_masker
from colormae.models.mae import mae_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("bench_cost", ROOT / "benchmarks" / "cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bank_memory_is_its_patterns_and_online_masks_hold_none(cost):
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = mae_model("mae_vit_micro_patch4_32")
    online = cost.memory_accounting(model, make_masker("green", 8, source="online"), 4, cpu)
    bank_masker = make_masker("green", 8, source="bank", bank_patterns=16, bank_size=32)
    bank = cost.memory_accounting(model, bank_masker, 4, cpu)
    random = cost.memory_accounting(model, make_masker("random", 8), 4, cpu)
    assert online["mask_state"] == random["mask_state"] == 0
    assert bank["mask_state"] == 16 * 32 * 32 * 4
    assert bank["total"] - random["total"] == bank["mask_state"]
    n = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # fixed sin-cos embeddings: no state
    assert trainable < n
    assert random["weights"] == 4 * n and random["gradients"] == 4 * trainable
    assert random["adamw_moments"] == 8 * trainable
    # activations: the same network at the same masking ratio saves the same tensors
    assert random["activations"] == online["activations"] > 0


def test_flops_do_not_depend_on_the_mask_and_scale_with_the_encoder(cost):
    cpu = torch.device("cpu")
    model = mae_model("mae_vit_micro_patch4_32")
    f_random = cost.forward_flops(model, make_masker("random", 8), 2, cpu)
    f_green = cost.forward_flops(model, make_masker("green", 8), 2, cpu)
    assert f_random == f_green > 0
    # 50 % masking encodes twice the tokens of 75 %: more FLOPs
    assert cost.forward_flops(model, make_masker("random", 8, 0.5), 2, cpu) > f_random


def test_static_and_timing_parts_write_their_own_files(cost, tmp_path):
    common = ["--preset", "mae_vit_micro_patch4_32", "--vit-b-batch", "0", "--batch", "4", "--out", str(tmp_path)]
    written = cost.main(["--part", "static", *common])
    assert [p.name for p in written] == ["static_cpu.csv"]
    rec = json.loads((tmp_path / "static_cpu.json").read_text())
    assert [(r["mask"], r["source"]) for r in rec["rows"]] == cost.CONFIGS
    assert rec["environment"]["device"] == "cpu" and "torch" in rec["environment"]
    assert not (tmp_path / "timing_cpu.csv").exists()  # timing never runs with the static part
    cost.main(["--part", "timing", "--rounds", "1", "--steps", "1", *common])
    rows = json.loads((tmp_path / "timing_cpu.json").read_text())["rows"]
    assert rows[0]["time_vs_random"] == 1.0 and rows[-1]["source"] == "again"


@pytest.mark.parametrize("argv, message", [(["--part", "nope"], "invalid choice"), (["--batch", "0"], "--batch"),
                                           (["--vit-b-batch", "-1"], "--vit-b-batch")])
def test_bad_arguments_are_argparse_errors(cost, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cost.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
