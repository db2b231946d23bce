"""spark-submit entry point:
`spark-submit jobs/experiment.py [--profile P] [--set experiment.seeds=[0]] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
