"""One exception type for everything a user can get wrong.

The CLI prints a MeowError as one line and exits non-zero; the web app shows it inline.
Anything else that escapes is a bug, and is reported as such.
"""


class MeowError(Exception):
    """A problem the user can fix: bad file, unknown model, bad setting."""


class NotApplicable(MeowError):
    """The method cannot run in this setting (with LoRA, on this model...): where it names a
    fallback (Method.falls_back_to), pipeline.unlearn runs that one instead and says why."""


class Cancelled(MeowError):
    """The user cancelled a running job."""


class PeerFailed(MeowError):
    """In a data-parallel run (distributed.py): another process failed, so this one stopped."""


class MeowWarning(UserWarning):
    """Something the user should know that does not stop the job (the CLI prints one line)."""
