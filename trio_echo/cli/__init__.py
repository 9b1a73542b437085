"""The command line (``python -m trio_echo``): :mod:`.options` parses it, :mod:`.main` runs the
chosen model, :mod:`.failures` turns every way it ends into an exit status and one line."""
