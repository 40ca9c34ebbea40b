"""The ``faas`` command line: a thin client of the platform's HTTP API."""
