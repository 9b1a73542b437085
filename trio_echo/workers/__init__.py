"""``--workers N``: a Trio supervisor (:mod:`.supervisor`) and N worker processes
(:mod:`.worker`) sharing the port: each with its own ``SO_REUSEPORT`` sockets where the kernel
balances them (Linux), else all accepting from one shared listening socket."""
