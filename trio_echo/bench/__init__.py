"""``python -m trio_echo bench``: every model as a real server process, driven over loopback.

One job per module:

* :mod:`.cli` -- the flags: which models, which scenarios, the CPUs; then the outputs;
* :mod:`.runner` -- the run: every scenario for every model, in turns (or in lanes, for
  ``--quick``), the progress bar;
* :mod:`.lineup` -- the models the bench knows (the CLI's, trio-bare, trio-w2, trio-nohub);
* :mod:`.baseline` -- ``--baseline REV``: the trio model of another git revision (``trio@REV``);
* :mod:`.scenarios` -- what each scenario does and which figures it reports (a package: the
  list, the types they share, one module per kind of scenario);
* :mod:`.server` -- one ``python -m trio_echo --model X`` subprocess: start, port, CPU, RSS, stop;
* :mod:`.bare` -- ``trio-bare``, the reference: a bare ``trio.serve_tcp`` handler, bench-only;
* :mod:`.loadgen` -- compiles ``loadgen.c`` (the C load generator: epoll, or poll() where
  there is none; closed and open loop) and runs it;
* :mod:`.numbered` -- the shutdown scenarios' clients: numbered, self-checking lines, counted;
* :mod:`.syscalls` -- a server under ``strace -f -c``: system calls per request by name;
* :mod:`.stats` -- percentiles from the load generator's latency histogram (pure);
* :mod:`.targets` -- the performance targets, evaluated on a run's figures (``--check``);
* :mod:`.report` -- the terminal table and the JSON file; :mod:`.keeps`, its table of what a
  shutdown keeps;
* :mod:`.markdown`, :mod:`.labpage` -- the pages (docs/benchmarks.md, docs/lab.md), from a
  report; :mod:`.lab` -- each model's own code lines and code excerpts, from the source;
* :mod:`.plot` -- the PNG chart (``--plot``, matplotlib optional);
* :mod:`.ratios` -- model ÷ model per figure (before/after, the accelerator's worth, trio-w2);
* :mod:`.machine` -- the machine and the software versions; process figures (psutil);
* :mod:`.outside` -- the outside check (``nox -s outside``): :mod:`.vmbench`, MagicStack's
  ``echo_client`` (pinned, not vendored), against our load generator; :mod:`.verdict`, whether
  the two agree (±15 %) and whether the comparison was fair.
"""
