"""The README's quick start and .ci/run stay in sync, the README stays short, and every command the
documentation shows (README.md, docs/*.md, csrc/README.md, bench/README.md) names a subcommand,
option, module, script, build target or extra that exists.

The commands are not run (most need a model, a GPU or minutes); what is checked is what goes stale
when code moves: a renamed option, a removed subcommand, a bench module or script that is gone.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 300
# The quick start's first command: install, then classify the bundled examples with the bundled model.
QUICK_START_RUN = "pip install torch==2.13.0 && pip install . && diffcls-fast classify examples/*.png"


def doc_files() -> list[Path]:
    """Every Markdown file whose commands are checked."""
    return [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "csrc" / "README.md", ROOT / "bench" / "README.md"]


def ci_test_command() -> str:
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(test_cmd) == 1
    return test_cmd[0].strip()


def quick_start_commands() -> list[str]:
    """The fenced command blocks of the README's "Quick start" section."""
    text = README.read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for lang, b in re.findall(r"```(\w*)\n(.*?)```", section, re.S) if lang in ("bash", "sh")]


def test_ci_runs_the_readme_test_command():
    assert ci_test_command() in README.read_text()


def test_quick_start_is_exactly_the_two_commands():
    """Install and classify the bundled examples; install and run the tests (the CI's command)."""
    assert quick_start_commands() == [QUICK_START_RUN, ci_test_command()]
    assert sorted((ROOT / "examples").glob("*.png")), "the quick start classifies examples/*.png"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (move details to docs/)"


# -- extracting the commands ---------------------------------------------------------------------------
def _code_lines(text: str) -> list[str]:
    """Command lines: every line of the shell (or unlabelled) fenced blocks, continuations joined,
    plus inline code spans that start like a command."""
    lines: list[str] = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang in ("bash", "sh", "shell", ""):
            lines += body.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"\s*\n\s*", " ", prose))  # a span may be wrapped over two lines
    command = (  # after VAR=value
        r"(?:[A-Z_]+=\S+ )*(diffcls-fast [a-z-]|python -m |python scripts/|pip install |build/diffcls-run|diffcls-run"
        r" |pytest )"
    )
    lines += [s for s in spans if re.match(command, s)]
    return lines


def _segments(line: str) -> list[str]:
    """One line cut into its commands (at &&, ;, a background &) with the trailing comment dropped."""
    line = re.split(r"\s#\s|\s#$|^#", line, maxsplit=1)[0]
    return [s.strip() for s in re.split(r"&&|;|\s&\s|\s&$", line) if s.strip()]


def _options(segment: str) -> list[str]:
    return re.findall(r"(?<![\w./-])(--[a-z][a-z0-9-]*)", segment)


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every command segment of every checked file."""
    out = []
    for f in doc_files():
        for line in _code_lines(f.read_text()):
            out += [(str(f.relative_to(ROOT)), seg) for seg in _segments(line)]
    return out


# -- what exists ---------------------------------------------------------------------------------------
@cache
def cli_options() -> dict[str, set[str]]:
    """Option strings of each diffcls-fast subcommand ("" for the top level), from the parser itself."""
    import argparse

    from diffcls_fast.cli import build_parser

    ap = build_parser()
    out = {"": set(ap._option_string_actions)}
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            out |= {name: set(p._option_string_actions) for name, p in action.choices.items()}
    return out


@cache
def extras() -> set[str]:
    setup = (ROOT / "setup.py").read_text()
    block = setup.split("extras_require=", 1)[1]
    return set(re.findall(r'^\s*"([\w-]+)":', block, re.M))


def _defines(path: Path, option: str) -> bool:
    return f'"{option}"' in path.read_text() or f"'{option}'" in path.read_text()


def check(command: str) -> list[str]:
    """What is wrong with one documented command (an empty list when nothing is)."""
    bad = []
    m = re.search(r"(?:diffcls-fast|-m diffcls_fast\.cli)(?:\s+([a-z][a-z-]*))?\b(.*)", command)
    if m and not re.match(r"diffcls-fast:", command):
        sub, rest = m.group(1) or "", m.group(2)
        opts = cli_options()
        if sub not in opts:
            return [f"no subcommand {sub!r}"]
        if sub != "bench":  # bench's arguments belong to bench/throughput.py
            bad += [f"diffcls-fast {sub}: no option {o}" for o in _options(rest) if o not in opts[sub]]
        return bad
    m = re.search(r"python3? -m (bench\.\w+|pytest)\b(.*)", command)
    if m:
        if m.group(1) == "pytest":
            return bad
        src = ROOT / (m.group(1).replace(".", "/") + ".py")
        if not src.exists():
            return [f"no module {m.group(1)}"]
        return [
            f"{m.group(1)}: no option {o}"
            for o in _options(m.group(2))
            if o not in ("--help",) and not _defines(src, o)
        ]
    m = re.search(r"python3? (scripts/[\w/]+\.py)(.*)", command)
    if m:
        src = ROOT / m.group(1)
        if not src.exists():
            return [f"no script {m.group(1)}"]
        return [
            f"{m.group(1)}: no option {o}"
            for o in _options(m.group(2))
            if o not in ("--help",) and not _defines(src, o)
        ]
    m = re.search(r"(?:^|\s|/)diffcls-run\b(.*)", command)
    if m:
        src = ROOT / "csrc" / "tools" / "diffcls_run.cpp"
        return [f"diffcls-run: no option {o}" for o in _options(m.group(1)) if not _defines(src, o)]
    for extra in re.findall(r"pip install '(?:\.|diffcls-fast)\[([\w,-]+)\]'", command):
        bad += [f"no extra {e!r} in setup.py" for e in extra.split(",") if e not in extras()]
    m = re.match(r"pytest ((?:[\w./-]+/?)+)(?:\s|$)", command)
    if m and not m.group(1).startswith("-") and not (ROOT / m.group(1)).exists():
        bad.append(f"pytest: no path {m.group(1)}")
    return bad


def test_the_docs_show_commands_from_every_kind():
    """The extraction finds the commands it is meant to check (a broken pattern would check nothing)."""
    cmds = [c for _, c in doc_commands()]
    assert QUICK_START_RUN.split(" && ")[-1] in cmds and "python -m pytest -q" in cmds
    for needle in (
        "diffcls-fast serve",
        "-m diffcls_fast.cli eval",
        "python -m bench.",
        "python scripts/",
        "build/diffcls-run",
        "pip install '.[serve]'",
    ):
        assert any(needle in c for c in cmds), needle
    assert {f for f, _ in doc_commands()} >= {
        "README.md",
        "docs/serving.md",
        "docs/scale-out.md",
        "csrc/README.md",
        "bench/README.md",
    }


@pytest.mark.parametrize("where", [str(f.relative_to(ROOT)) for f in doc_files()])
def test_documented_commands_exist(where):
    assert (ROOT / where).exists(), f"{where} is missing"
    bad = [f"{cmd!r}: {why}" for f, cmd in doc_commands() if f == where for why in check(cmd)]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_stale_commands():
    assert check("diffcls-fast classify x.png --no-such-option") == [
        "diffcls-fast classify: no option --no-such-option"
    ]
    assert check("diffcls-fast frobnicate x.png") == ["no subcommand 'frobnicate'"]
    assert check("python -m bench.no_such_bench") == ["no module bench.no_such_bench"]
    assert check("python scripts/fit_calibration.py --model digits --no-such-flag") == [
        "scripts/fit_calibration.py: no option --no-such-flag"
    ]
    assert check("build/diffcls-run exported/digits x.png --no-such-flag") == ["diffcls-run: no option --no-such-flag"]
    assert check("pip install '.[nope]'") == ["no extra 'nope' in setup.py"]
    assert check("diffcls-fast eval --model digits --shard 0/2 --out r.jsonl") == []
    assert check("diffcls-fast: error: ...") == []
