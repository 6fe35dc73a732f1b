"""``python -m monai_rd.compare``; see :mod:`monai_rd.compare.cli`."""

import sys

from monai_rd.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
