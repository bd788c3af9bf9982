"""envd-py: the in-sandbox daemon that the E2B SDKs talk to."""

# The upstream envd version whose behaviour we implement. Template builders
# record `envd -version` and the platform gates features on it, so it only
# goes up when the features that a version implies have landed
# (see ../shared/spec/versions.md and docs/compatibility.md).
ENVD_VERSION = "0.6.13"

# Our own package version; pyproject.toml reads it from here (one source of truth).
__version__ = "0.1.0"

DEFAULT_PORT = 49983
