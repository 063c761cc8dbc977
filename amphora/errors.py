"""Domain errors: what went wrong, in words a controller can act on.

Domain objects raise these without knowing about HTTP; the API layer maps each
class to the status code the spec gives it (``status``) and renders the one
error shape ``{"message": ..., "details": ...}``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class. ``message`` is the spec's short text, ``details`` the specifics."""

    status = 500
    message = "Internal Server Error"

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


class InvalidRequest(AgentError):
    status = 400
    message = "Invalid request"


class InvalidVIP(InvalidRequest):
    """The VIP in a plug-VIP URL (or its body) is no usable unicast address."""

    message = "Invalid VIP"


class Unauthorized(AgentError):
    status = 401
    message = "Unauthorized"


class NotFound(AgentError):
    status = 404
    message = "Not Found"


class CertificateNotFound(NotFound):
    message = "Certificate Not Found"

    def __init__(self, name: str):
        super().__init__(f"No certificate with file name: {name}")


class NoSuitableInterface(NotFound):
    """No interface to plug: none newly attached, several to choose from, or the one named is gone.

    The text is in ``details`` too, on every face: Octavia's controllers retry a 404
    (a hot-plugged NIC can appear a second late) only when its ``details`` hold it.
    """

    message = "No suitable network interface found"

    def __init__(self, reason: str):
        super().__init__(f"{self.message}: {reason}")


class ListenerNotFound(NotFound):
    message = "Listener Not Found"

    def __init__(self, listener_id: str):
        super().__init__(f"No listener with UUID: {listener_id}")


class LoadBalancerNotFound(NotFound):
    message = "Loadbalancer Not Found"

    def __init__(self, lb_id: str):
        super().__init__(f"No loadbalancer with UUID: {lb_id}")


class MethodNotAllowed(AgentError):
    status = 405
    message = "Method Not Allowed"


class PayloadTooLarge(AgentError):
    status = 413
    message = "Payload Too Large"


class OperationFailed(AgentError):
    """A real operation (haproxy, keepalived, netlink) failed; details carry its output."""

    status = 500


class TopologyTransitionInProgress(AgentError):
    status = 503
    message = "Topology transition in progress"
