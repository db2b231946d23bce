"""spark-submit entry point: `spark-submit jobs/cluster.py [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
