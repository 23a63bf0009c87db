"""Rewrite (or check) the map of stages in upparat/core/README.md from the transition
table: `python -m upparat.statemap --write` / `--check`. The drawing is
`upparat.core.statemap`; this module only reads and writes the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upparat.core import statemap

README = Path(__file__).parent / "core" / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upparat.statemap", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the README's map")
    action.add_argument("--check", action="store_true", help="exit 1 if the map is stale")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    fresh = statemap.with_map(text)
    if args.write:
        if fresh != text:
            README.write_text(fresh, encoding="utf-8")
            print(f"{README}: map rewritten")
        return 0
    if fresh != text:
        print(
            f"{README}: the map differs from machine.ROWS; run python -m upparat.statemap --write"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
