"""amphora-agent: the Octavia Reference HAProxy Amphora API v0.1 on Twisted."""

__version__ = "0.1.0"
API_VERSION = "0.1"
