"""`python -m bonserve ...` = the `bonserve` console script."""

import sys

from bonserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
