"""Grammar compilers, used by the parent only: JSON schema and regex patterns to GBNF, and tool calls.

The worker receives finished grammars and never imports this package.
"""
