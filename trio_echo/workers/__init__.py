"""``--workers N``: a Trio supervisor (:mod:`.supervisor`) and N worker processes
(:mod:`.worker`) sharing the port with ``SO_REUSEPORT``."""
