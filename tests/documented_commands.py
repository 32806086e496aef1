"""The ``python main.py ...`` commands of the README, docs/ and the config docstrings, as written.

    python tests/documented_commands.py     # runs those this machine has the inputs for

``tests/test_docs_commands.py`` parses every one; run this script before you stop to run, from
the repository root, each command whose inputs exist here (the smoke config's need none; the others
need their datasets, weights or images at the paths the docs use) and to list the others with
what they need. Exit status: the number of commands that failed.
"""

import pathlib
import re
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "configs").glob("*.py"))]
INPUTS = ("--image_folder", "--cifar10_archive", "--manual_dir", "--weights", "--images", "--config.dataset.data_dir")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for each ``python main.py`` line, continuation lines joined, comments cut,
    shell variables set in the same file (``NAME="..."``) filled in; "..." marks an elided command."""
    found = []
    for path in SOURCES:
        text = path.read_text().replace("\\\\\n", "\\\n")  # docstrings escape their backslashes
        text = re.sub(r"\\\n\s*", " ", text)
        variables = dict(re.findall(r'^([A-Z_]+)="([^"]*)"$', text, re.M))
        for number, line in enumerate(text.splitlines(), 1):
            match = re.search(r"(?:^|\$ |`)(python main\.py +-[^`#\n]*)", line)
            if match and "..." not in match.group(1):
                command = match.group(1)
                for name, value in variables.items():
                    command = command.replace(f"${name}", value)
                found.append((f"{path.relative_to(ROOT)}:{number}", command.strip()))
    return found


def missing_inputs(command: str) -> list[str]:
    """The input paths ``command`` names that this machine lacks."""
    missing = []
    for arg in shlex.split(command.replace("$HOME", str(pathlib.Path.home()))):
        flag, _, value = arg.partition("=")
        if flag in INPUTS and value and not pathlib.Path(value).expanduser().exists():
            missing.append(value)
    if "--tfds_source=" in command and "--manual_dir=" not in command:
        missing.append("internet (TFDS downloads the source)")
    needs_data = "configs/smoke.py" not in command and "--mode=prepare" not in command
    if needs_data and "--config.dataset.data_dir" not in command and "--config=" in command:
        missing.append("the config's dataset (TFDS download)")
    return missing


def main() -> int:
    failed, seen = 0, set()
    for where, command in documented_commands():
        if command in seen:
            continue
        seen.add(command)
        missing = missing_inputs(command)
        if missing:
            print(f"skipped  {where}: needs {', '.join(missing)}")
            continue
        started = time.perf_counter()
        done = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        print(f"{'ran' if done.returncode == 0 else 'FAILED':8} {where} ({seconds:.0f} s): {command}", flush=True)
        if done.returncode != 0:
            failed += 1
            print(done.stderr[-2000:])
    return failed


if __name__ == "__main__":
    sys.exit(main())
