"""spark-submit entry point:
`spark-submit jobs/train.py [--profile P] [--set k=v] [--run-name N] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
