"""The command line: `llama-isolate` run as a person would type it, the chat TUI, and the benchmarks' plumbing."""
