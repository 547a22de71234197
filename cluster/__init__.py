"""Cluster wiring: configuration, the pipeline coordinator, Ray start-up, and the CLI.

Ray binds the machine's non-loopback address unless told otherwise, and it reads
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when it is first imported.  Every
entry point (the CLI, the benchmarks, the tests) imports this package before
Ray, so this is the one place that sets it: a single-node Ray started here stays
on 127.0.0.1.  A value the user exported is kept.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
