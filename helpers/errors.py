"""The one error type for mistakes a user fixes: a parameter, a path, a model file, a run folder.

Its message says what is wrong and how to fix it. In a notebook it shows as that one line, not
as a traceback (IPython calls `_render_traceback_`), so a student sees what to change and nothing
else; "Run all" still stops there. The command lines print it as `error: ...` and exit 2.
"""


class UserError(ValueError):
    """A mistake the user fixes; the message names the fix."""

    def _render_traceback_(self):
        return [f"{type(self).__name__}: {self}"]
