"""``python -m trio_echo``: see :mod:`trio_echo.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
