import os
import sys

from .cli import main
from .distributed import launched_size

code = main()
if launched_size() > 1:
    # A process of a data-parallel run, its work done and its part of the group closed, leaves
    # without the interpreter's shutdown: there gloo's and c10d's threads can still abort it
    # (SIGABRT, "terminate called without an active exception"), failing a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
