"""Test data at rest: case files (the reference tool's JSON), the content-addressed
blob store of cores and modules, the remote store a team shares, and their
lifecycle (upload, export, clean).

This package knows nothing about cores or unwinding; opening a case as a process
is replay's job (harness/replay.py).
"""
