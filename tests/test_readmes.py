"""Every `xbench` command in a command block of every README (the repository's and each plugin's)
parses with the command line as it is, and every `--set NAME.KEY=VALUE` in it names an option the
component declares, with a value of its type (issue 16: `xbench inspect X --set X.root=...` was
documented but failed). Commands that need nothing but the installed plugins are run."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from xbench_core.cli import _parser, inspect_options, main
from xbench_core.plugins import get_registry

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("plugins/*/README.md"))]
BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
RUNNABLE = {("list",), ("list", "explainers"), ("list", "models"), ("list", "datasets"), ("plugins",)}


def commands(readme: Path) -> list[str]:
    """The `xbench ...` command lines of a README's shell blocks (continuations joined)."""
    out = []
    for block in BLOCK.findall(readme.read_text()):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("xbench "):
                out.append(line.split(" #", 1)[0].split(" > ", 1)[0].split(" | ", 1)[0])
    return out


CASES = [(readme, line) for readme in READMES for line in commands(readme)]


def test_the_readmes_have_commands() -> None:
    assert len(CASES) >= 15 and any(r.parent == ROOT for r, _ in CASES)


@pytest.mark.parametrize("readme, line", CASES, ids=[f"{r.parent.name}:{i}" for i, (r, _) in enumerate(CASES)])
def test_readme_command(readme: Path, line: str) -> None:
    where = f"{readme.relative_to(ROOT)}: {line}"
    words = [w for w in shlex.split(re.sub(r"\$\{?\w+\}?", "0", line))[1:] if w not in ("...", "(...)")]
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            args = _parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"{where}: does not parse: {err.getvalue().strip().splitlines()[-1]}")
    registry = get_registry()
    components = {**registry.datasets, **registry.models, **registry.explainers}
    sets = getattr(args, "sets", []) or []
    if args.command == "inspect" and args.dataset:  # the options exactly as `xbench inspect` reads them
        given = [(args.dataset, key, value) for key, value in inspect_options(args.dataset, sets).items()]
    else:
        given = [(*a.partition("=")[0].split(".", 1), a.partition("=")[2]) for a in sets]
    for name, option, value in given:
        if name not in components:
            continue  # a plugin that is not installed here
        declared = {o.name: o for o in components[name].options}
        assert option in declared, f"{where}: {name} has no option {option!r} (it has {', '.join(declared)})"
        if declared[option].type != "path" and value != "random":
            declared[option].coerce(value, name)
    if tuple(words) in RUNNABLE:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(words) == 0, where
