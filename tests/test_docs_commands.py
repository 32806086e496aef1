"""Every ``python main.py ...`` command the README, docs/ and the config docstrings give parses as
written: the config exists, every flag and ``--config.<field>`` override is known and well typed.
(Running them needs their data: ``python tests/documented_commands.py`` runs those this machine has
the inputs for.)"""

import re
import shlex

import pytest
from conftest import ROOT
from documented_commands import documented_commands

import main

COMMANDS = documented_commands()


def test_the_docs_give_commands_for_every_mode():
    modes = {re.search(r"--mode=(\w+)", c).group(1) if "--mode=" in c else "train" for _, c in COMMANDS}
    assert modes == set(main.MODES) and len(COMMANDS) > 30


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses(where, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command.replace("$HOME", "/home/user"))[1:]  # python's arguments: main.py, flags
    main.parse_args(argv)
