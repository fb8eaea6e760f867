"""The shipped example: a deterministic light-sheet lab submission and its packaging spec."""

from bidspack.examples.submission import EXAMPLE_SPEC_NAME, example_spec_text, write_submission

__all__ = ["EXAMPLE_SPEC_NAME", "example_spec_text", "write_submission"]
