"""The ``dopd`` command line."""
