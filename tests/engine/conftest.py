"""Engine tests. Being a conftest, this file puts ``tests/engine`` on ``sys.path``, so the
shared helpers of ``engine_helpers`` import from the subfolders' tests as well."""
