"""One set of sink contract cases (``actors/sinks/base.py``), run on every sink in ``conftest.SINK_KINDS``."""
