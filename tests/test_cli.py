"""One command line: ``colormae <command>`` (console script) == ``python -m colormae <command>``."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from colormae import cli
from colormae.engines import ENGINES, PretrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_with_one_line(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        assert len(line.split()) > 2, line  # a description follows the name
    assert set(ENGINES) <= set(cli.COMMANDS)
    assert {"experiments", "reproduce", "weights", "submit"} <= set(cli.COMMANDS)


def test_python_dash_m_and_console_script_agree():
    by_module = subprocess.run([sys.executable, "-m", "colormae", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert by_module.returncode == 0 and "pretrain" in by_module.stdout
    script = shutil.which("colormae") or str(Path(sys.executable).parent / "colormae")
    if not Path(script).exists():
        pytest.skip("the colormae console script is not installed (pip install -e .)")
    by_script = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert by_script.returncode == 0 and by_script.stdout == by_module.stdout


def test_console_script_exits_0_when_a_command_returns_a_result(monkeypatch):
    # a console script exits with its function's return value: a command's summary or path must not
    # become exit status 1 (`colormae convert` did)
    monkeypatch.setitem(cli.COMMANDS, "convert", (lambda argv: Path("out"), "stub"))
    monkeypatch.setattr(sys, "argv", ["colormae", "convert"])
    assert cli.console_main() == 0
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'colormae = "colormae.cli:console_main"' in pyproject


def test_unknown_command_names_the_allowed_ones(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrian"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'pretrian'" in err and "pretrain, finetune" in err


def test_parse_command_parses_and_runs_nothing(tmp_path):
    cfg = cli.parse_command(["pretrain", "--preset", "mae_vit_micro_patch4_32", "--output-dir", str(tmp_path / "r")])
    assert isinstance(cfg, PretrainConfig) and cfg.preset == "mae_vit_micro_patch4_32"
    assert not (tmp_path / "r").exists()
    ours, job = cli.parse_command(["submit", "--nodes", "2", "--job", "finetune", "--",
                                   "--encoder", "x", "--epochs", "3"])
    assert ours.nodes == 2 and job.encoder == "x" and job.epochs == 3
    assert cli.parse_command(["experiments", "cifar10-grid16", "--scale", "gpu"]).scale == "gpu"
    with pytest.raises(SystemExit):
        cli.parse_command(["pretrain", "--norm-pix-loss", "false"])  # a boolean flag takes no value


def test_the_old_module_entry_points_are_gone():
    """One way to do each thing: ``python -m colormae.pretrain`` and friends no longer exist."""
    proc = subprocess.run([sys.executable, "-m", "colormae.pretrain", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode != 0 and "No module named colormae.pretrain" in proc.stderr


def test_readme_command_table_is_the_registry():
    """README's command table lists exactly the commands of ``cli.COMMANDS``, with their --help lines."""
    rows = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| `")]
    table = {}
    for ln in rows:
        name, line = [c.strip() for c in ln.strip("|").split("|")[:2]]
        if name.strip("`") in cli.COMMANDS:
            table[name.strip("`")] = line
    assert table == {name: line for name, (_, line) in cli.COMMANDS.items()}
