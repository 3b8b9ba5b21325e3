"""`python -m bench`: the benchmarks, which live in the package; the same as `llama-isolate bench`."""

import sys

from llama_isolate._cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
