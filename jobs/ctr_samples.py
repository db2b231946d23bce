"""spark-submit entry point:
`spark-submit jobs/ctr_samples.py --start D --end D [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["ctr-samples", *sys.argv[1:]]))
