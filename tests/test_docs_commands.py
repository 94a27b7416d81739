"""Every command the README and docs/ show in their code blocks is one the tools accept:
`lsdflow ...` lines parse with the installed command's parser (options, choices, argument
counts), `make X` names a Makefile target, `python path.py` names a file in the repo.
(Running them all is what the rest of the suite does, on small data.)"""

from __future__ import annotations

import re
import shlex

import pytest

from lsdflow.cli.main import build_parser

from .conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    """(document:line, command) for every command line inside a fenced code block."""
    found = []
    for document in DOCUMENTS:
        inside, pending, start = False, "", 0
        for number, line in enumerate(document.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside = not inside
                continue
            if not inside:
                continue
            text = re.sub(r"\s+#.*$", "", line).strip()  # a comment after the command
            if pending:
                text, pending = pending + " " + text, ""
            elif not re.match(r"^(lsdflow [a-z-]+|make|python) ", text + " ") or (
                    text.startswith("lsdflow ") and text.split()[1] not in SUBCOMMANDS) or re.search(r"\S {4,}\S", text):
                continue  # output shown in a block (a table row starting with "lsdflow ...")
            else:
                start = number
            if text.endswith("\\"):
                pending = text[:-1].strip()
                continue
            found.append((f"{document.relative_to(ROOT)}:{start}", text))
    return found


def _concrete(command: str) -> list[str]:
    """The command with its optional parts `[...]` dropped and placeholders filled in."""
    while re.search(r"\[[^\[\]]*\]", command):
        command = re.sub(r"\s*\[[^\[\]]*\]", "", command)
    command = re.sub(r"<[^<>]*>", "PLACEHOLDER", command)
    command = command.replace("...", "")
    return shlex.split(command)


SUBCOMMANDS = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
COMMANDS = documented_commands()


def test_the_docs_show_commands():
    kinds = {command.split()[0] for _, command in COMMANDS}
    assert kinds == {"lsdflow", "make", "python"} and len(COMMANDS) > 30


@pytest.mark.parametrize("where, command", [c for c in COMMANDS if c[1].startswith("lsdflow ")],
                         ids=lambda value: value if ":" in str(value) else "")
def test_documented_lsdflow_commands_parse(where, command):
    parser = build_parser()
    try:
        parser.parse_args(_concrete(command)[1:])
    except SystemExit as e:
        pytest.fail(f"{where}: `{command}` is refused by the parser (exit {e.code})")


def test_documented_make_targets_and_scripts_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    missing = []
    for where, command in COMMANDS:
        words = _concrete(command)
        if words[0] == "make":
            missing += [f"{where}: make {w}" for w in words[1:] if "=" not in w and w not in targets]
        elif words[0] == "python" and len(words) > 1 and words[1] != "-m":
            missing += [] if (ROOT / words[1]).is_file() else [f"{where}: {words[1]}"]
    assert not missing, missing
