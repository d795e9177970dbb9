"""Every example of the evaluation commands, in the README and in ``--help``, survives a shell as pasted: no
unquoted ``<``, ``>``, ``|``, ``;`` or ``&`` that a shell would act on, options that exist, gates that parse.
(The README's blocks are also run against a stack: ``tests/e2e/test_readme_commands.py``.)"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import pytest
import typer

from tests.readme_blocks import EVALUATION_COMMANDS, commands_of, help_examples, readme_blocks
from workers.cli import app
from workers.evaluation.gates import parse_gate

SHELL_OPERATORS = {"<", ">", ">>", "<=", ">=", "|", "||", "&", "&&", ";", "<<", ">&", "<&"}


def _tokens(command: str) -> list[str]:
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "commands")  # typer vendors its own click: no isinstance against click.Group


def _rest(ctx: Any) -> list[str]:
    """The arguments a group left for its subcommand (click 8.2 renamed ``protected_args``)."""
    protected = getattr(ctx, "protected_args", None)
    return [*(protected if protected is not None else ctx._protected_args), *ctx.args]


def _parse(args: list[str]) -> Any:
    """Parse a ragstream command line as the CLI would (options, values, choices), without running it."""
    cmd: Any = typer.main.get_command(app)
    ctx = cmd.make_context("ragstream", list(args))
    rest = _rest(ctx)
    while _is_group(cmd) and rest:
        name, *rest = rest
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"no command {name!r}"
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
        rest = _rest(ctx) if _is_group(sub) else []
    return ctx


def _check(command: str) -> None:
    tokens = _tokens(command)
    assert not SHELL_OPERATORS & set(tokens), f"a shell acts on {SHELL_OPERATORS & set(tokens)} in: {command}"
    out = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if tokens[0] != "ragstream":
        return
    words = shlex.split(command)
    ctx = _parse(words[1:])
    for i, w in enumerate(words):
        if w == "--fail-on":
            parse_gate(words[i + 1])
    assert ctx.command is not None


def test_the_readme_evaluation_blocks_paste_into_a_shell() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 2  # the evaluation section and the dead-letter commands
    used = set()
    for block in blocks:
        for command in commands_of(block):
            _check(command)
            if command.startswith("ragstream "):
                used.add(command.split()[1])
    assert used == set(EVALUATION_COMMANDS)


def _all_commands() -> list[tuple[str, Any]]:
    group: Any = typer.main.get_command(app)
    out = []
    for name in EVALUATION_COMMANDS:
        cmd = group.commands[name]
        if _is_group(cmd):
            out += [(f"{name} {sub}", c) for sub, c in cmd.commands.items()]
        else:
            out.append((name, cmd))
    return out


@pytest.mark.parametrize(("name", "command"), _all_commands(), ids=[n for n, _ in _all_commands()])
def test_every_help_example_parses(name: str, command: Any) -> None:
    examples = help_examples(command.help or "")
    assert examples, f"`ragstream {name} --help` shows no example"
    for example in examples:
        assert example.startswith(f"ragstream {name}"), example
        _check(example)


def test_a_bad_command_line_is_caught_by_the_checks() -> None:
    with pytest.raises(AssertionError):
        _check("ragstream evaluate --candidate run:x --fail-on error_rate<=0.01")
    with pytest.raises(Exception, match="No such option"):
        _check("ragstream shadow --run x --until-response 5")
    with pytest.raises(Exception, match="valid names"):
        _check("ragstream evaluate --candidate run:x --fail-on hit@10:-0.1")
