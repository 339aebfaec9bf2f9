import os
import sys

# `python -m factcli` puts the current directory first on sys.path; the `fact` script does not.
# Drop it so that both import only what is installed or on PYTHONPATH (a checkpoint that names
# a module must not find one planted next to it).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main  # noqa: E402

main()
