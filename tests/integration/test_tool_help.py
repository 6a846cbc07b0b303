"""``emailrelay <tool> --help`` for every operator tool: clean text, every option described.

Run as a program, as an operator would, for each tool in the tools table that
``emailrelay --help`` lists.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from emailrelay.cli.tools import SUBCOMMANDS
from tests.support.relay import program

QUEUE_COMMANDS = ("list", "show", "retry", "delete", "hold", "release")
#: every tool, and each of the queue tool's commands (their options are in their own --help)
HELPS = [(t,) for t in SUBCOMMANDS if t != "queue"] + [("queue", c) for c in QUEUE_COMMANDS]


@pytest.mark.parametrize("words", HELPS, ids=" ".join)
def test_tool_help_is_clean_and_describes_every_option(words: tuple[str, ...]) -> None:
    tool = " ".join(words)
    done = subprocess.run([program(), *words, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    # emailrelay-notify, -resubmit and -bounce are also programs of their own (upstream's script names)
    assert text.startswith((f"usage: emailrelay {tool} ", f"usage: emailrelay-{tool} ")), text
    assert "``" not in text and ":mod:" not in text and ":func:" not in text  # no docstring markup
    lines = text.splitlines()
    options = [
        n for n, line in enumerate(lines) if re.match(r"^  -", line) and not line.startswith("  -h, --help")
    ]
    assert options, text
    for n in options:  # a description on the option's line, or on the next, indented further
        described = re.match(r"^  -\S.*?\s{2,}\S", lines[n]) or (
            n + 1 < len(lines) and re.match(r"^ {8,}\S", lines[n + 1])
        )
        assert described, f"{tool}: no description for {lines[n].strip()!r}"


def test_queue_help_names_its_commands() -> None:
    done = subprocess.run([program(), "queue", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert [c for c in QUEUE_COMMANDS if re.search(rf"^    {c} +[a-z]", done.stdout, re.M)] == list(
        QUEUE_COMMANDS
    )


def test_main_help_names_every_tool() -> None:
    done = subprocess.run([program(), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    tools = done.stdout.split('(see "emailrelay <tool> --help"):\n', 1)[1].splitlines()
    assert [line.split()[0] for line in tools] == list(SUBCOMMANDS)
