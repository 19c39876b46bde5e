"""Training entry point (``python -m export3d.train``). Not implemented yet: see the training issue."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("export3d.train: training is not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
