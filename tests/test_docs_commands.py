"""The documentation's command lines parse, its links resolve and it names no removed module.

Documents: README.md, docs/*.md and paper_figures/README.md.

Where a command is found: in fenced code blocks (```), in indented code blocks (lines indented by
four spaces, the first one after a blank line) and in inline `single-backtick` spans. A backslash
at the end of a code line joins it with the next. Each line or span is split into shell words
(shlex, POSIX rules), which drops trailing ``# ...`` comments, and cut at ``;``, ``&&``, ``||``,
``|`` and ``&``. A piece is a colormae command when it starts with ``colormae`` or when
``-m colormae`` appears in it (``python -m colormae``, ``python3 -m colormae``,
``torchrun [its flags] -m colormae``); the words after ``colormae`` are its argument list.

Placeholders, one rule each, applied to the argument list before it is parsed:
- ``...`` or ``…`` (more arguments of the reader's choice) is dropped;
- ``<anything>`` (``<pretrain args>``, ``<command>``) is dropped, with the words inside it;
- ``[--flag value]`` (optional) is kept without its brackets;
- ``{a,b,c}`` (a choice) becomes its first alternative, ``a``;
- ``$name`` / ``${name}`` becomes ``SHELL_VARIABLES[name]`` (a loop variable of the docs); an
  unknown variable fails the test;
- capitalised words such as ``RUN_DIR``, ``RUN``, ``DIR`` stay as they are: they are paths, and
  parsing does not open them.

The argument list then goes to ``colormae.cli.parse_command``, which parses it as the command
would and runs nothing; an argparse error fails the test with argparse's message. A command
with ``-h``/``--help`` must exit with status 0 (argparse prints the help); an empty argument list
or ``--help`` alone is ``colormae --help``. Two other kinds of command are checked as far as they
can be without running them: ``papermill notebooks/X.ipynb out.ipynb -p name value`` (X exists and
has a parameter ``name``) and ``python benchmarks/X.py --flag`` (X exists and defines ``--flag``).

The removed entry points ``python -m colormae.<module>`` (and ``-m colormae.<module>`` under
torchrun) must appear nowhere, and every dotted ``colormae.x.y`` name in a code span and every
``colormae/...`` path must exist, except in the README's "What changed" section, which names the
old ones on purpose. Relative links (files and ``#heading`` anchors) must resolve.
"""
from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from colormae import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "paper_figures" / "README.md"]
SHELL_VARIABLES = {"m": "random"}      # `for m in random green none; do colormae ... --masks $m &`
WHAT_CHANGED = "What changed"          # README section allowed to name the old modules
SEPARATORS = {";", "&&", "||", "|", "&"}


@dataclass(frozen=True)
class Snippet:
    """A piece of a document that may hold a command: its text and where it starts."""
    path: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _lines_outside_what_changed(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a document, without the README's "What changed" section."""
    out, skipping, in_fence = [], False, False
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,6} ", line):
            skipping = path == ROOT / "README.md" and WHAT_CHANGED in line
        if not skipping:
            out.append((no, line))
    return out


def snippets(path: Path, text: str | None = None) -> list[Snippet]:
    """Code blocks (fenced and indented, continuation lines joined) and inline code spans."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    found: list[Snippet] = []
    in_fence, indented, prev_blank = False, False, True
    pending: tuple[int, str] | None = None     # a code line that ended in a backslash
    for no, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            in_fence, indented, prev_blank, pending = not in_fence, False, False, None
            continue
        if not in_fence:
            if line.startswith("    ") and (indented or prev_blank):
                indented = True
            elif line.strip():
                indented = False
            prev_blank = not line.strip()
        if in_fence or (indented and line.strip()):
            start, joined = pending if pending else (no, "")
            joined += " " + line.strip()
            if joined.endswith("\\"):
                pending = (start, joined[:-1])
            else:
                pending = None
                found.append(Snippet(path, start, joined.strip()))
        elif line.strip():
            pending = None
            for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):   # ``double`` spans hold no commands
                found.append(Snippet(path, no, span))
    return found


def _words(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    return list(lex)


def _substitute(argv: list[str], where: str) -> list[str]:
    out, in_angle = [], False
    for word in argv:
        if in_angle or word.startswith("<"):
            in_angle = not word.endswith(">")
            continue
        if word in ("...", "…"):
            continue
        word = word.removeprefix("[").removesuffix("]")
        choice = re.fullmatch(r"\{([^{}]*)\}", word)
        if choice:
            word = choice.group(1).split(",")[0]
        for name in re.findall(r"\$\{?(\w+)\}?", word):
            assert name in SHELL_VARIABLES, f"{where}: unknown shell variable ${name}; add it to SHELL_VARIABLES"
            word = re.sub(r"\$\{?" + name + r"\}?", SHELL_VARIABLES[name], word)
        if word:
            out.append(word)
    return out


def pieces(snippet: Snippet) -> list[list[str]]:
    """The snippet's shell words, cut at ``;``, ``&&``, ``||``, ``|`` and ``&`` (comments dropped)."""
    try:
        words = _words(snippet.text)
    except ValueError as err:              # unbalanced quotes: not shell (e.g. Python in a span)
        if re.search(r"(^|\s)(-m\s+)?colormae\s", snippet.text):
            raise AssertionError(f"{snippet.where}: cannot split {snippet.text!r}: {err}") from err
        return []
    out, piece = [], []
    for word in words:
        if word in SEPARATORS:
            out.append(piece)
            piece = []
        else:
            piece.append(word)
    return [p for p in [*out, piece] if p]


def commands_in(snippet: Snippet) -> list[list[str]]:
    """Argument lists of the colormae commands in a snippet (placeholders substituted)."""
    out = []
    for piece in pieces(snippet):
        for i, word in enumerate(piece):
            if word == "colormae" and (i == 0 or piece[i - 1] == "-m"):
                out.append(_substitute(piece[i + 1:], snippet.where))
                break
    return out


def all_commands() -> list[tuple[str, list[str]]]:
    return [(s.where, argv) for path in DOCS for s in snippets(path) for argv in commands_in(s)]


COMMANDS = all_commands()


def test_the_docs_hold_commands():
    """Guards the extraction itself: every command of ``colormae --help`` is used somewhere."""
    assert len(COMMANDS) > 40, COMMANDS
    found = {argv[0] for _, argv in COMMANDS if argv}
    assert set(cli.COMMANDS) <= found, set(cli.COMMANDS) - found


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w}:{' '.join(a)[:60]}" for w, a in COMMANDS])
def test_command_parses(where, argv, capsys):
    if not argv or argv[0] in ("-h", "--help"):
        assert cli.main(["--help"]) is None
        return
    wants_help = "-h" in argv or "--help" in argv
    try:
        cli.parse_command(argv)
    except SystemExit as exc:
        message = capsys.readouterr().err.strip().splitlines()[-1:]
        assert wants_help and exc.code == 0, f"{where}: `colormae {' '.join(argv)}` does not parse: {message}"
        return
    assert not wants_help, f"{where}: --help did not exit"


def test_extraction_follows_the_rules():
    doc = "\n".join([
        "Run `colormae experiments cifar10-grid16 --masks $m` and `colormae.masks.noise`.", "",
        "```bash",
        "for m in random green; do",
        "  torchrun --nproc_per_node 8 -m colormae pretrain --mask green \\",
        "    --epochs 3 ...   # a comment -> here",
        "done; colormae submit --nodes 2 -- <pretrain args> && echo done",
        "colormae reproduce [--notebooks 07] [--run-experiments]",
        "colormae finetune --encoder RUN_DIR --protocol {knn,finetune}",
        "```", "",
        "    python3 -m colormae detect --encoder RUN --data coco &",
    ])
    path = ROOT / "docs" / "_rules_example.md"
    got = [argv for s in snippets(path, doc) for argv in commands_in(s)]
    assert got == [
        ["experiments", "cifar10-grid16", "--masks", "random"],
        ["pretrain", "--mask", "green", "--epochs", "3"],
        ["submit", "--nodes", "2", "--"],
        ["reproduce", "--notebooks", "07", "--run-experiments"],
        ["finetune", "--encoder", "RUN_DIR", "--protocol", "knn"],
        ["detect", "--encoder", "RUN", "--data", "coco"],
    ]


def test_a_bad_flag_fails(capsys):
    """What a wrong doc line looks like to the test: `--norm-pix-loss false` is not a boolean flag."""
    with pytest.raises(SystemExit) as exc:
        cli.parse_command(["pretrain", "--norm-pix-loss", "false"])
    assert exc.value.code == 2
    assert "unrecognized arguments: false" in capsys.readouterr().err


def _other_commands(program: str) -> list[tuple[str, list[str]]]:
    """(where, words) of the pieces whose program (after ``python``/``python3``/``bash``) matches the
    regular expression ``program``."""
    out = []
    for path in DOCS:
        for snip in snippets(path):
            for piece in pieces(snip):
                words = piece[1:] if piece[0] in ("python", "python3", "bash") else piece
                if words and re.fullmatch(program, words[0]):
                    out.append((snip.where, words))
    return out


def _notebook_parameters(notebook: Path) -> set[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


PAPERMILL = _other_commands("papermill")


@pytest.mark.parametrize("where,words", PAPERMILL, ids=[w for w, _ in PAPERMILL])
def test_papermill_parameters_exist(where, words):
    """``papermill notebooks/X.ipynb out.ipynb -p name value``: X exists and has a parameter ``name``
    (``NAME.ipynb`` is the placeholder of the generic form and is skipped)."""
    notebook = words[1]
    if "NAME" in notebook:
        return
    assert (ROOT / notebook).is_file(), f"{where}: no {notebook}"
    names = [words[i + 1] for i, w in enumerate(words) if w in ("-p", "--parameters")]
    unknown = set(names) - _notebook_parameters(ROOT / notebook)
    assert not unknown, f"{where}: {notebook} has no parameter(s) {sorted(unknown)}"


BENCHMARKS = _other_commands(r"benchmarks/\w+\.(py|sh)")


@pytest.mark.parametrize("where,words", BENCHMARKS, ids=[f"{w}:{' '.join(a)[:40]}" for w, a in BENCHMARKS])
def test_benchmark_flags_exist(where, words):
    """A ``benchmarks/`` script named in the docs exists, and each ``--flag`` given to it is one it defines."""
    script = ROOT / words[0]
    assert script.is_file(), f"{where}: no {words[0]}"
    source = script.read_text(encoding="utf-8")
    flags = [w.split("=")[0] for w in _substitute(words[1:], where) if w.startswith("--")]
    unknown = [f for f in flags if f'"{f}"' not in source]
    assert not unknown, f"{where}: {words[0]} defines no {unknown}"


REMOVED_ENTRY = re.compile(r"-m\s+colormae\.\w")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_removed_entry_points(path):
    bad = [f"{no}: {line.strip()}" for no, line in _lines_outside_what_changed(path) if REMOVED_ENTRY.search(line)]
    where = path.relative_to(ROOT)
    assert not bad, f"{where} still names `python -m colormae.<module>` (now `colormae <command>`):\n" + "\n".join(bad)


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_code_exists(path):
    """``colormae.a.b`` names in code spans import; ``colormae/a/b.py`` paths exist."""
    missing = []
    for no, line in _lines_outside_what_changed(path):
        for span in re.findall(r"`([^`\n]+)`", line):
            for dotted in re.findall(r"(?<![\w/.-])colormae(?:\.[A-Za-z_]\w*)+", span):
                if not _resolves(dotted):
                    missing.append(f"{no}: {dotted}")
        for rel in re.findall(r"(?<![\w/.-])colormae/[\w/.]*\w", line):
            if not (ROOT / rel).exists():
                missing.append(f"{no}: {rel}")
    assert not missing, f"{path.relative_to(ROOT)} names code that does not exist:\n" + "\n".join(missing)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors, in_fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):       # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{no}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{no}: {target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)} links to nothing:\n" + "\n".join(broken)


def test_readme_links_to_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme) if not t.startswith("http")}
    assert (ROOT / "docs" / "README.md").resolve() in linked
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    listed = {(ROOT / "docs" / t.partition("#")[0]).resolve() for t in LINK.findall(index)}
    unlisted = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md" and p.resolve() not in listed]
    assert not unlisted, f"docs/README.md does not list {unlisted}"


def test_readme_python_snippets_run():
    """The README's ```python blocks ("Color masks in your own MAE") run as written (on the CPU here)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert blocks
    spaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
        spaces.append(namespace)
    masks = next(ns for ns in spaces if "x_visible" in ns)  # "Color masks in your own MAE"
    assert tuple(masks["x_visible"].shape) == (8, 49, 768)
    hf = next(ns for ns in spaces if "noise" in ns)  # "Pretrained weights from anywhere"
    assert tuple(hf["noise"].shape) == (2, 64) and hf["model"].has_decoder
