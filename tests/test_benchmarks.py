"""The benchmark scripts' command lines (nothing heavy is timed here)."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MICRO_PRESET = "mae_vit_micro_patch4_32"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_pretrain():
    return load_script("pretrain")


def test_pretrain_benchmark_nothing_to_run_is_an_argparse_error(bench_pretrain, capsys):
    with pytest.raises(SystemExit) as e:
        bench_pretrain.main(["--device", "cpu", "--skip-vit-b", "--skip-cpu-preset"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nothing to run" in err and "Traceback" not in err
    args = bench_pretrain.parse_args(["--device", "cpu", "--skip-vit-b"])  # one skip flag alone is fine
    assert args.skip_vit_b and not args.skip_cpu_preset


def fake_res(base, colors, again):
    """A bench() result: median step times of random, the 8 color rows, and random again."""
    med = {("random", "online"): base}
    med.update(zip([(c, s) for c in ("blue", "green", "purple", "red") for s in ("online", "bank")], colors))
    med[("random", "again")] = again
    return {"med": med, "peak": {}, "grid": 8}


@pytest.mark.parametrize("skip", [[], ["--skip-vit-b"], ["--skip-cpu-preset"]])
def test_pretrain_benchmark_summary_matches_the_printed_tables(bench_pretrain, monkeypatch, capsys, skip):
    """Timing replaced by fixed numbers (a different ratio per table): every summary line names a
    printed table and repeats that table's own mean/min/max 'vs random' and its control row."""
    fake = {("mae_vit_micro_patch4_32", True): fake_res(1.0, [1.0, 1.1, 1.2, 1.3, 1.0, 1.0, 1.0, 1.4], 1.05),
            ("mae_vit_micro_patch4_32", False): fake_res(2.0, [1.0] * 8, 2.2),
            ("mae_vit_base_patch16", True): fake_res(4.0, [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.4, 3.6], 4.2)}
    monkeypatch.setattr(bench_pretrain, "bench", lambda preset, batch, device, rounds, steps, amp: fake[preset, amp])
    monkeypatch.setattr(bench_pretrain, "step_flops", lambda preset, batch, device: 1e12)
    bench_pretrain.main(["--device", "cpu", "--cpu-preset", "mae_vit_micro_patch4_32", *skip])
    text = capsys.readouterr().out
    body, summary = text.split("summary, one line per table above:")
    tables = {}  # title -> list of (kind, source, vs random)
    for block in body.split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) > 2 and lines[1].startswith("mask"):
            title = lines[0].split("  (grid")[0]
            tables[title] = [(ln.split()[0], ln.split()[1], float(ln.split()[4])) for ln in lines[2:12]]
    n_tables = 3 - 2 * ("--skip-cpu-preset" in skip) - ("--skip-vit-b" in skip)
    lines = [ln.strip() for ln in summary.strip().splitlines()]
    assert len(tables) == n_tables == len(lines)
    for line, (title, rows) in zip(lines, tables.items()):
        assert line.startswith(title + ":")
        ratios = [r for kind, _, r in rows if kind != "random"]
        again = next(r for kind, src, r in rows if src == "again")
        assert f"mean {sum(ratios) / len(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}" in line
        assert f"(random again / random) {again:.3f}" in line


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit; this machine has CUDA")
def test_gpu_check_without_cuda_exits_at_once_with_one_line(tmp_path):
    runs = ROOT / "results" / "gpu_check"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}  # the interpreter running the tests
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert "CUDA" in lines[0] and "not available" in lines[0]
    assert "Traceback" not in out and "skipped" not in out and "==" not in out
    assert elapsed < 60, elapsed
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == before  # no output folder for a run that did not run


@pytest.mark.parametrize("script, args", [
    ("gpu_segment.py", ["--crop", "64", "--head-channels", "16"]),
    ("gpu_detect.py", ["--img-size", "64", "--patch-size", "8", "--fpn-channels", "16", "--roi-batch", "16"])])
def test_dense_gpu_benchmarks_smoke_on_cpu(script, args):
    """gpu_check.sh steps 6-7 grep these scripts' summary lines: a CPU smoke run must print them."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "benchmarks" / script), "--device", "cpu", "--preset", "mae_vit_micro_patch4_32",
           "--batches", "2", "--steps", "1", "--warmup", "0", "--amp", "none", *args]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines()
               if line.startswith(("segmentation summary:", "detection summary:"))]
    assert len(summary) == 1 and "img/s at batch 2" in summary[0]
    bad = subprocess.run([*cmd, "--batches", "two"], cwd=root, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--batches 'two'" in bad.stderr


def test_pack_tars_round_trip_keeps_every_member_byte_for_byte(tmp_path, capsys):
    """The device carry format: unpacked tars hold the same members, names and bytes (order kept)."""
    import io as _io
    import tarfile

    pack_tars = load_script("pack_tars")
    src = tmp_path / "src"
    src.mkdir()
    rng = torch.Generator().manual_seed(0)
    expected = {}
    for split in ("train", "test"):
        files = [(f"{split}/cls{i % 2}/{i:03d}.jpg", bytes(torch.randint(0, 256, (50 + i,), generator=rng).tolist()))
                 for i in range(5)]
        expected[split] = files
        with tarfile.open(src / f"{split}.tar", "w") as tar:
            dir_info = tarfile.TarInfo(f"{split}/cls0")
            dir_info.type = tarfile.DIRTYPE
            tar.addfile(dir_info)  # directories are dropped: implied by the names
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, _io.BytesIO(data))
    pack_tars.main(["pack", str(src), str(tmp_path / "d.pkl.xz")])
    pack_tars.main(["unpack", str(tmp_path / "d.pkl.xz"), str(tmp_path / "out")])
    for split, files in expected.items():
        with tarfile.open(tmp_path / "out" / f"{split}.tar") as tar:
            assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == files
    with pytest.raises(SystemExit) as e:
        pack_tars.main(["pack", str(tmp_path / "nowhere"), str(tmp_path / "x.pkl.xz")])
    assert e.value.code == 2 and "src=" in capsys.readouterr().err


def test_loop_benchmark_smoke_prints_rates_ratio_and_mfu(monkeypatch, capsys, tmp_path):
    """benchmarks/loop.py on the CPU, tiny: the bare and the real loop's img/s, their ratio, FLOPs and
    the peak (n/a on a CPU), and one summary line whose ratio is its own two rates' (gpu_check greps it)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/loop.py` has it
    loop = load_script("loop")
    monkeypatch.setenv("COLORMAE_CACHE", str(tmp_path / "cache"))
    argv = ["--device", "cpu", "--preset", MICRO_PRESET, "--batch", "8", "--steps", "2", "--warmup", "2",
            "--log-every", "2", "--rounds", "1", "--data", "embedded", "--threads", "1"]
    jpeg = ["--jpeg-pipelines", "files,gpu-decode", "--jpeg-images", "48", "--jpeg-root", str(tmp_path / "jpegs"),
            "--num-workers", "0"]
    threads = torch.get_num_threads()
    try:
        loop.main([*argv, *jpeg])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"model FLOPs per step: [0-9.]+ GFLOP", out) and "peak: n/a" in out, out
    header = next(ln for ln in out.splitlines() if ln.startswith("path"))
    assert header.split() == ["path", "img/s", "min", "max", "real/bare", "TFLOP/s", "MFU", "peak", "MiB"]
    m = re.search(r"loop summary \(eager\): real ([0-9.]+) img/s, bare ([0-9.]+) img/s, real/bare ([0-9.]+), "
                  r"MFU real n/a", out)
    assert m, out
    real, bare, ratio = map(float, m.groups())
    assert real > 0 and bare > 0 and abs(ratio - real / bare) < 2e-3
    # one round: the per-round ratio is that round's, i.e. the same two rates'
    m = re.search(r"real/bare by round: median ([0-9.]+), range ([0-9.]+)-([0-9.]+) over 1 rounds", out)
    assert m and abs(float(m[1]) - ratio) < 2e-3 and m[1] == m[2] == m[3], out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith(("bare ", "real "))}
    assert float(rows["real"][1]) == real and float(rows["bare"][1]) == bare and float(rows["real"][4]) == ratio
    for pipeline in ("files", "gpu-decode"):  # the real loop on JPEGs through each pipeline, beside the bare step
        m = re.search(rf"jpeg loop summary \({pipeline}, 0 workers\): real ([0-9.]+) img/s, real/bare ([0-9.]+)", out)
        assert m and abs(float(m[2]) - float(m[1]) / bare) < 2e-3, out
    for bad, message in ((["--steps", "3"], "multiples of --log-every"), (["--memory-batches", "2x"], "integers"),
                         (["--compile-mode", "reduce-overhead"], "without --compile"),
                         (["--jpeg-pipelines", "nvjpeg"], "allowed values: files, gpu-decode, dali"),
                         (["--jpeg-pipelines", "files", "--jpeg-images", "32"], "inside one epoch")):
        with pytest.raises(SystemExit) as e:
            loop.parse_args([*argv, *bad])
        assert e.value.code == 2 and message in capsys.readouterr().err
