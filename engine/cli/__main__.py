"""``python -m engine.cli ARGS``: the ``mi-atlas`` command line (through its exception boundary)."""

import sys

from engine.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
