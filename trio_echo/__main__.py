"""``python -m trio_echo``: see :mod:`trio_echo.cli.main`."""

import sys

from trio_echo.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
