"""envd-py: the in-sandbox daemon that the E2B SDKs talk to."""

from importlib.metadata import PackageNotFoundError, version

# The upstream envd version whose behaviour we implement. Template builders
# record `envd -version` and the platform gates features on it, so it only
# goes up when the features that a version implies have landed
# (see ../shared/spec/versions.md and docs/compatibility.md).
ENVD_VERSION = "0.5.2"

try:
    __version__ = version("envd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

DEFAULT_PORT = 49983
