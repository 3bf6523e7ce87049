"""Any bench script on two checkouts, in pairs whose order alternates: one figure, side by side.

This machine's speed drifts between minutes and hours, and on two cores whichever server runs
second in a pair often meets a warmer or a busier machine. So each pair runs the script on both
checkouts, the first pair before-then-after, the next after-then-before, and so on; the figure is
read from the script's output with `--figure` (a regular expression whose first group is the
number). Prints every run, then each checkout's median and the ratio of the medians.

    .venv/bin/python bench/pairs.py ../before . --pairs 4 \\
        --figure 'completed ([\\d,.]+)/s' -- bench/abeja.py --duration 5 --postgres

Each checkout runs with its own `.venv/bin/python` when it has one (else this Python), from its
own directory, so its own `bench/` and `modelbay/` are what run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path


def run_once(checkout: Path, script: list[str], figure: re.Pattern[str], timeout: float) -> float:
    python = checkout / ".venv" / "bin" / "python"
    done = subprocess.run([str(python) if python.exists() else sys.executable, *script], cwd=checkout,
                          capture_output=True, text=True, timeout=timeout)
    found = figure.search(done.stdout) or figure.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{checkout}: exit {done.returncode}, figure {figure.pattern!r} not found:\n{tail}")
    return float(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--pairs", type=int, default=4, help="pairs of runs (the order alternates)")
    parser.add_argument("--figure", required=True, help="regular expression; its first group is the figure")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("script", nargs="+", help="the bench script and its arguments (after --)")
    args = parser.parse_args()
    figure = re.compile(args.figure)
    checkouts = [args.before.resolve(), args.after.resolve()]
    figures: dict[Path, list[float]] = {checkout: [] for checkout in checkouts}
    for pair in range(args.pairs):
        for checkout in checkouts if pair % 2 == 0 else reversed(checkouts):
            value = run_once(checkout, args.script, figure, args.timeout)
            figures[checkout].append(value)
            print(f"pair {pair}  {checkout}  {value:,.1f}", flush=True)
    before, after = (statistics.median(figures[checkout]) for checkout in checkouts)
    for checkout in checkouts:
        print(f"median  {checkout}  {statistics.median(figures[checkout]):,.1f}  "
              f"({', '.join(f'{value:,.1f}' for value in figures[checkout])})")
    print(f"after / before: {after / before:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
