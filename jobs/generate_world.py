"""spark-submit entry point: `spark-submit jobs/generate_world.py [--profile P] [--set k=v] ...`."""

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate-world", *sys.argv[1:]]))
