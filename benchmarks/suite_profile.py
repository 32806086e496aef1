"""Where the test suite's time goes, from a py-spy profile of the whole run (all its processes).

  py-spy record --subprocesses --rate 25 --format raw -o suite.raw -- python -m pytest -q
  python benchmarks/suite_profile.py suite.raw

py-spy (https://github.com/benfred/py-spy) is not a dependency: install it apart (`pip install
py-spy` in another environment). Each line of its raw output is a stack (frames joined by ``;``)
and a sample count. A sample goes to the first category whose pattern its stack holds (tracing
before lowering: a program traced while another is lowered counts as tracing), and to the test
whose function it ran in. Prints two Markdown tables: by category, and the tests with the most samples.
Samples are of Python stacks: XLA's own threads running a program are not in them, and "other"
holds the rest, threads that py-spy samples while they wait included.
"""

import argparse
import collections
import re

CATEGORIES = (  # (name, a pattern of the stack), the first that matches
    ("importing TensorFlow", "tensorflow/__init__"),
    ("importing (other modules)", "_find_and_load"),
    ("XLA compiling", "backend_compile"),
    ("JAX tracing", "trace_to_jaxpr"),
    ("JAX lowering to StableHLO", "lower_jaxpr_to_module"),
    ("checkpoints (Orbax)", "orbax/"),
    ("figures (matplotlib)", "matplotlib/"),
    ("waiting for a program's results", "_value (jax/_src/array.py"),
)
TEST = re.compile(r"(test_\w+) \((?:tests/)?(test_\w+\.py):")


def read_samples(path: str):
    """(stack, count) per line of a py-spy raw profile."""
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if count.isdigit():
                yield stack, int(count)


def summarise(samples) -> tuple[collections.Counter, collections.Counter, int]:
    """Samples by category and by test, and the total."""
    categories, tests, total = collections.Counter(), collections.Counter(), 0
    for stack, count in samples:
        total += count
        category = next((name for name, pattern in CATEGORIES if pattern in stack), "other")
        categories[category] += count
        test = TEST.search(stack)
        tests[f"{test.group(2)}::{test.group(1)}" if test else "(outside a test's function)"] += count
    return categories, tests, total


def table(counts: collections.Counter, total: int, heading: str, rows: int, rate: float) -> str:
    lines = [f"| {heading} | samples | share | seconds at {rate:g} Hz |", "|---|---:|---:|---:|"]
    for name, count in counts.most_common(rows):
        lines.append(f"| {name} | {count} | {100 * count / total:.1f}% | {count / rate:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="py-spy's raw output (--format raw)")
    parser.add_argument("--rate", type=float, default=25, help="the sampling rate it was recorded at (--rate)")
    parser.add_argument("--tests", type=int, default=15, help="rows of the tests' table")
    args = parser.parse_args()
    categories, tests, total = summarise(read_samples(args.profile))
    print(f"{total} samples\n")
    print(table(categories, total, "category", len(categories), args.rate) + "\n")
    print(table(tests, total, "test", args.tests, args.rate))


if __name__ == "__main__":
    main()
