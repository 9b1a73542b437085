"""What every model of the lab shares about sockets, none of it tied to a concurrency library:
binding and inherited sockets (:mod:`.bind`), ``--allow``/``--deny`` (:mod:`.access`), the TLS
context (:mod:`.tls`) and the PROXY protocol parser (:mod:`.proxy_protocol`)."""
