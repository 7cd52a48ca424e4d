# The cffi extension modules are declared here: setuptools reads cffi_modules
# only from setup(); everything else lives in pyproject.toml.
from setuptools import setup

setup(
    cffi_modules=[
        "src/nflog_pipe/_native/build.py:nflog_ffi",
        "src/nflog_pipe/_native/build.py:records_ffi",
        "src/nflog_pipe/_native/build.py:bpf_ffi",
    ],
)
