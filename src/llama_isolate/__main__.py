"""`python -m llama_isolate`: the command line (see `llama-isolate --help`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
