"""``python -m trio_echo``: see :mod:`trio_echo.cli.main`."""

from trio_echo.cli.main import exit_program, main

if __name__ == "__main__":
    exit_program(main())
