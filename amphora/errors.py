"""Domain errors: what went wrong, in words a controller can act on.

Domain objects raise these without knowing about HTTP; the API layer maps each
class to the status code the spec gives it (``status``) and renders the one
error shape ``{"message": ..., "details": ...}``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class. ``message`` is the spec's short text, ``details`` the specifics.

    A subclass states its status code and message in its header:
    ``class NotFound(AgentError, status=404, message="Not Found")``.
    """

    status = 500
    message = "Internal Server Error"

    def __init_subclass__(cls, status: int | None = None, message: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if message is not None:
            cls.message = message

    def __init__(self, details: object = None, message: str | None = None):
        if message is not None:
            self.message = message
        self.details = details
        super().__init__(self.message if details is None else f"{self.message}: {details}")

    def body(self) -> dict:
        body: dict = {"message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidRequest(AgentError, status=400, message="Invalid request"):
    """The request is malformed or asks for something the agent refuses."""


class InvalidVIP(InvalidRequest, message="Invalid VIP"):
    """The VIP in a plug-VIP URL (or its body) is no usable unicast address."""


class Unauthorized(AgentError, status=401, message="Unauthorized"):
    """No acceptable client certificate."""


class NotFound(AgentError, status=404, message="Not Found"):
    """What the request asks for does not exist."""


class NamedNotFound(NotFound):
    """A 404 about one thing the request names: ``details`` is ``template`` with it filled in."""

    template = "{}"

    def __init__(self, name: str):
        super().__init__(self.template.format(name))


class CertificateNotFound(NamedNotFound, message="Certificate Not Found"):
    template = "No certificate with file name: {}"


class NoSuitableInterface(NamedNotFound, message="No suitable network interface found"):
    """No interface to plug: none newly attached, several to choose from, or the one named is gone.

    The text is in ``details`` too, on every face: Octavia's controllers retry a 404
    (a hot-plugged NIC can appear a second late) only when its ``details`` hold it.
    """

    template = "No suitable network interface found: {}"


class ListenerNotFound(NamedNotFound, message="Listener Not Found"):
    template = "No listener with UUID: {}"


class LoadBalancerNotFound(NamedNotFound, message="Loadbalancer Not Found"):
    template = "No loadbalancer with UUID: {}"


class MethodNotAllowed(AgentError, status=405, message="Method Not Allowed"):
    """The path exists, the method does not."""


class PayloadTooLarge(AgentError, status=413, message="Payload Too Large"):
    """The body is larger than the configured limit."""


class OperationFailed(AgentError, status=500):
    """A real operation (haproxy, keepalived, netlink) failed; details carry its output."""


class TopologyTransitionInProgress(AgentError, status=503, message="Topology transition in progress"):
    """A topology transition is under way; the request may be repeated when it has ended."""
