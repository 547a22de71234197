"""actors/logs.py: one-line errors from Ray-wrapped exceptions."""

from actors.logs import error_line


def test_error_line_looks_through_ray_wrappers():
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("ray::WriterActor.open()")
            self.cause = cause

    assert error_line(Wrapped(ValueError("dimension 8 != 384"))) == "dimension 8 != 384"
    assert error_line(Wrapped(ValueError("bad\nsecond line")), with_type=True) == "ValueError: bad"
    remote = RuntimeError("ray::X()\nTraceback (most recent call last):\n  File 'a.py'\nactors.sinks.base.SinkError: locked")
    assert error_line(remote) == "locked"
