"""Development tools, not part of the installed package: the local stack of real servers and
the demo on it, used by the tests, the benchmarks, `make demo` and `make dev`.

Importable from the project root (the tests and benchmarks run from there); `pip install .`
installs only `sftp_minio_assets`.
"""
