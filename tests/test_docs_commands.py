"""Every ``python main.py ...`` command the README, docs/ and the config docstrings give parses as
written: the config exists, every flag and ``--config.<field>`` override is known and well typed.
(Running them needs their data; the cheap ones run elsewhere in the suite.)"""

import pathlib
import re
import shlex

import pytest
from conftest import ROOT

import main

SOURCES = [pathlib.Path(ROOT, "README.md"), *sorted(pathlib.Path(ROOT, "docs").glob("*.md"))]
SOURCES += sorted(pathlib.Path(ROOT, "configs").glob("*.py"))


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for each ``python main.py`` line, continuation lines joined, comments cut."""
    found = []
    for path in SOURCES:
        text = path.read_text().replace("\\\\\n", "\\\n")  # docstrings escape their backslashes
        text = re.sub(r"\\\n\s*", " ", text)
        variables = dict(re.findall(r'^([A-Z_]+)="([^"]*)"$', text, re.M))  # e.g. SMALL="--config.x=1 ..."
        for number, line in enumerate(text.splitlines(), 1):
            match = re.search(r"(?:^|\$ |`)(python main\.py[^`#\n]*)", line)
            if match and "..." not in match.group(1):  # "..." stands for flags given elsewhere
                command = match.group(1)
                for name, value in variables.items():
                    command = command.replace(f"${name}", value)
                found.append((f"{path.name}:{number}", command.strip()))
    return found


COMMANDS = documented_commands()


def test_the_docs_give_commands_for_every_mode():
    modes = {re.search(r"--mode=(\w+)", c).group(1) if "--mode=" in c else "train" for _, c in COMMANDS}
    assert modes == set(main.MODES) and len(COMMANDS) > 30


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses(where, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command.replace("$HOME", "/home/user"))[1:]  # python's arguments: main.py, flags
    main.parse_args(argv)
