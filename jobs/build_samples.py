"""spark-submit entry point: `spark-submit jobs/build_samples.py [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-samples", *sys.argv[1:]]))
