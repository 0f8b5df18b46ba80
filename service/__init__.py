"""cirelay: drive Tencent Cloud Infinite batch media jobs from your own systems."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cirelay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
