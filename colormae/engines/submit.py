"""Run an engine on Slurm through submitit (optional extra: ``pip install -e .[slurm]``).

    colormae submit --nodes 4 --gpus-per-node 8 --partition gpu --timeout-min 4320 \\
        -- --preset mae_vit_base_patch16 --dataset imagefolder --data-root /imagenet --epochs 800 \\
           --batch-size 128 --mask green --output-dir results/pretrain/green_800e

Everything after ``--`` goes to ``colormae pretrain`` (or ``--job finetune|segment|detect``)
unchanged. Each task exports torch.distributed's variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) and
calls the same entry point that ``torchrun -m colormae <job>`` would; on preemption or timeout the
job requeues itself with ``--resume auto``, so it continues from ``checkpoint-last.pth``.

``--cluster``: ``slurm`` (default; needs ``sbatch`` and ``srun`` on PATH, otherwise the launcher stops
with one line, status 2), ``local`` (submitit's local executor: one background process per GPU on
this machine, ``--gpus-per-node 0`` for one CPU process) or ``debug`` (runs the job now, in this
process, and returns its result; an unexpected exception opens pdb post-mortem, submitit's debug mode).
Only ``slurm`` adds ``--device cuda`` when the job's arguments name no device.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from .launch import ENGINES, engine_main

log = logging.getLogger(__name__)


class Job:
    """Picklable callable that submitit runs on every task."""

    def __init__(self, job: str, argv: list[str]):
        self.job, self.argv = job, argv

    def __call__(self):
        import submitit
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return engine_main(self.job, self.argv)

    def checkpoint(self):
        """Called by submitit on preemption/timeout: requeue the same job, resuming."""
        import submitit
        return submitit.helpers.DelayedSubmission(Job(self.job, requeue_argv(self.argv)))


def requeue_argv(argv: list[str]) -> list[str]:
    """``argv`` with any ``--resume X`` / ``--resume=X`` replaced by ``--resume auto`` at the end."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            out.append(a)
    return out + ["--resume", "auto"]


def slurm_missing() -> str | None:
    """None where Slurm's client commands are on PATH, else the message the launcher exits with."""
    for cmd in ("sbatch", "srun"):
        if shutil.which(cmd) is None:
            return f"Slurm not found (no {cmd} on PATH); use --cluster local to run on this machine"
    return None


def _output_dir(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--output-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--output-dir="):
            return a.split("=", 1)[1]
    return "results/slurm"


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(submit's own flags, the job's flags): everything after ``--`` goes to the job."""
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colormae submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", default="pretrain", choices=tuple(ENGINES))
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-gb", type=int, default=0, help="0 = let Slurm decide")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--timeout-min", type=int, default=60 * 72)
    p.add_argument("--job-name", default="colormae")
    p.add_argument("--log-dir", default=None, help="default: <output-dir>/slurm")
    p.add_argument("--cluster", default="slurm", choices=("slurm", "local", "debug"),
                   help="slurm (default), local (background processes on this machine) or debug "
                        "(runs now, in this process, and returns the result)")
    return p


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, rest = split_argv(argv)
    p = build_parser()
    args = p.parse_args(ours)
    if args.cluster == "slurm" and (msg := slurm_missing()):
        p.exit(2, f"{p.prog}: {msg}\n")
    try:
        import submitit
    except ImportError as e:
        raise SystemExit("submitit is not installed: pip install -e '.[slurm]'") from e

    log_dir = Path(args.log_dir or Path(_output_dir(rest)) / "slurm")
    executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster=args.cluster)
    params = dict(nodes=args.nodes, tasks_per_node=max(1, args.gpus_per_node), gpus_per_node=args.gpus_per_node,
                  cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min, name=args.job_name,
                  slurm_partition=args.partition, slurm_signal_delay_s=120)
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.account:
        params["slurm_account"] = args.account
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    names_device = any(a == "--device" or a.startswith("--device=") for a in rest)
    job_argv = rest + ["--device", "cuda"] if args.cluster == "slurm" and not names_device else rest
    job = executor.submit(Job(args.job, job_argv))
    logging.basicConfig(level=logging.INFO)
    if args.cluster == "debug":
        log.info("debug cluster: running the %s job in this process", args.job)
        result = job.result()  # submitit's DebugExecutor runs the job here
        run_dir = (result.get("config") or {}).get("output_dir") if isinstance(result, dict) else None
        log.info("debug job done; summary in %s", Path(run_dir or _output_dir(rest)) / "summary.json")
        return result
    log.info("submitted %s job %s (%s); logs in %s", args.job, job.job_id, args.cluster, log_dir)
    return job

