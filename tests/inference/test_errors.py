"""The one-line form of an error that the pipeline and the runner both print."""

from __future__ import annotations

from pipeline.inference.errors import first_line


def test_an_error_is_its_first_line_or_its_type() -> None:
    assert first_line(ValueError("\n  bad value\n  in: a long quoted config\n")) == "bad value"
    assert first_line(KeyError()) == "KeyError"  # an empty message would leave a bare `error: `
    assert first_line(OSError("   ")) == "OSError"
