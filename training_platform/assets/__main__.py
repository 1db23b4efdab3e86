"""`python -m training_platform.assets build-model DEST`: build the tiny model into DEST."""

from __future__ import annotations

import argparse
from pathlib import Path

from training_platform.assets.tiny import TINY_MODEL_NAME, build_tiny_model, count_parameters


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.assets")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-model", help=f"build the {TINY_MODEL_NAME} model")
    build.add_argument("dest", type=Path, help="directory to create (left as is if complete)")
    build.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    args = parser.parse_args(argv)

    path = build_tiny_model(args.dest, seed=args.seed)
    print(path)
    print(f"parameters: {count_parameters(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
