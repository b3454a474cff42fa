"""Puts this directory on sys.path (pytest's prepend import mode does so for a conftest),
so that tests in every subdirectory import the shared helpers here (``bitwise``,
``script_loader``) by their plain names."""
