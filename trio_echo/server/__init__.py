"""The ``trio`` model, in the order the data flows: a listener (:mod:`.listener`) hands out
streams (:mod:`.stream`, optionally accelerated by :mod:`.hub`), :func:`trio.serve_listeners`
starts one handler per stream (:mod:`.handler`), :mod:`.shutdown` gives the graceful stop, and
:mod:`.app` runs it all as a program with the stdout writer and the signals."""
