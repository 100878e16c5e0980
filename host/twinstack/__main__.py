"""``python -m twinstack``: the same as the ``twinstack`` command."""

import sys

from twinstack.cli import main

if __name__ == "__main__":
    sys.exit(main())
