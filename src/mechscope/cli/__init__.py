"""The ``mechscope`` command line: a thin router over the Python API."""
