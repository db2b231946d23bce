"""spark-submit entry point: `spark-submit jobs/embed.py [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
