"""``python -m trio_echo replay``: a capture of the server's jsonl output, played against a server.

One job per module:

* :mod:`.capture` -- the capture file back into each connection's bytes and times, checked
  line by line before anything is sent (pure, no Trio);
* :mod:`.play` -- the replay: one Trio task per captured connection, on the capture's clock
  scaled by ``--speed``;
* :mod:`.cli` -- the flags, the one-line errors, the exit status and the summary.
"""
