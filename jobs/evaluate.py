"""spark-submit entry point: `spark-submit jobs/evaluate.py [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
