"""One command line: ``colormae <command> [args...]`` (or ``python -m colormae <command> ...``;
under torchrun: ``torchrun --nproc_per_node N -m colormae pretrain ...``).

Each command is a module's entry point; ``colormae <command> --help`` shows its flags."""
from __future__ import annotations

import sys
from functools import partial
from typing import Any, Callable, Sequence

from .analysis import checkpoint_figures
from .engines import submit
from .engines.launch import ENGINES, engine_main, parse_engine_args
from .experiments import grids, release, reproduce
from .run import pretrained

# command -> (entry point taking argv, one line for `colormae --help`)
ENGINE_LINES = {
    "pretrain": "MAE pretraining with any mask: random, block, grid or a color (white, red, blue, green, purple)",
    "finetune": "evaluate an encoder: fine-tuning, linear probe, cached-feature probe or kNN",
    "segment": "semantic segmentation: UperNet on a pretrained encoder (ADE20K, Penn-Fudan, folders)",
    "detect": "detection and instance segmentation: ViTDet Mask R-CNN on a pretrained encoder",
}
COMMANDS: dict[str, tuple[Callable[[Sequence[str]], Any], str]] = {
    **{name: (partial(engine_main, name), ENGINE_LINES[name]) for name in ENGINES},
    "experiments": (grids.main, "the experiment grids behind the tables (resumable; one command each)"),
    "reproduce": (reproduce.main, "every figure and table: run the notebooks, list what each one makes"),
    "weights": (release.main, "compact fp16 release weights of a grid's runs and of fine-tuned classifiers"),
    "submit": (submit.main, "run an engine on Slurm (or locally) through submitit"),
    "convert": (pretrained.main, "convert MAE weights: MAE, official ColorMAE, timm, Hugging Face and ours -> --to "
                                 "timm, hf, mae or colormae"),
    "reconstruct": (checkpoint_figures.reconstruct_main, "Fig. 3 of any checkpoint with a decoder: original, "
                                                         "masked and reconstructed rows per mask kind"),
    "attention": (checkpoint_figures.attention_main, "Fig. 5 of any checkpoint: [CLS] attention maps and the "
                                                     "Penn-Fudan foreground-attention fraction"),
    "eigencam": (checkpoint_figures.eigencam_main, "Fig. 6 of any fine-tuned classifier: EigenCAM maps"),
}


def parse_command(argv: Sequence[str]) -> Any:
    """Parse ``colormae ARGV...`` as the command would, and run nothing: the engine's config, or
    the argparse namespace of the other commands (submit: its own flags, then the job's config).
    argparse errors exit with status 2, as on the command line."""
    command, rest = argv[0], list(argv[1:])
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; allowed values: {', '.join(COMMANDS)}")
    if command in ENGINES:
        return parse_engine_args(command, rest)
    if command == "submit":
        ours, job_argv = submit.split_argv(rest)
        args = submit.build_parser().parse_args(ours)
        return args, parse_engine_args(args.job, job_argv)
    parsers = {"experiments": grids.build_parser, "reproduce": reproduce.build_parser, "weights": release.build_parser,
               "convert": pretrained.build_parser, "reconstruct": checkpoint_figures.build_reconstruct_parser,
               "attention": checkpoint_figures.build_attention_parser,
               "eigencam": checkpoint_figures.build_eigencam_parser}
    return parsers[command]().parse_args(rest)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()]
    return ("usage: colormae <command> [args...]   (colormae <command> --help for its flags)\n\ncommands:\n"
            + "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return None
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"colormae: unknown command {command!r}; allowed values: {', '.join(COMMANDS)}\n\n" + usage())
        raise SystemExit(2)
    return COMMANDS[command][0](rest)


def console_main() -> int:
    """The ``colormae`` console script: run the command and exit 0. A console script exits with what its
    function returns, and commands return their results (a summary dict, a path) for callers in Python."""
    main()
    return 0
