"""The ``sessionstore`` command line for the on-call team."""
