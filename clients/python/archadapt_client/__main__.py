"""Run the command-line interface with ``python -m archadapt_client``."""

import sys

from archadapt_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
