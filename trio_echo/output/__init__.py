"""From a client's bytes to stdout: formatting (:mod:`.format`), the bounded queue that slows the
clients down when stdout is slow (:mod:`.queue`), the one writer task (:mod:`.writer`), the
blocking writes (:mod:`.stdout`) and the frames a ``--workers`` worker sends (:mod:`.frames`)."""
