"""`python -m bench`: the benchmarks, which live in the package (also `llama-isolate bench`)."""

from llama_isolate._bench.run import main

main()
