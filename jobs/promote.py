"""spark-submit entry point: `spark-submit jobs/promote.py [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
