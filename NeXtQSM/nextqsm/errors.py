"""The single user-facing exception type for bad input."""
from __future__ import annotations


class QSMInputError(ValueError):
    """A problem with user input: names the input, what is wrong, and what to do.

    ``str(err)`` reads "<input>: <problem>. Fix: <fix>".
    """

    def __init__(self, input_name: str, problem: str, fix: str):
        self.input_name = str(input_name)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.input_name}: {problem}. Fix: {fix}")
