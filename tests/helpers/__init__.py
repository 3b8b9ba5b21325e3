"""Shared code for the tests, and no tests: loads, pictures, the command line, a server on a socket, waiting."""
