"""keepalived for ACTIVE-STANDBY: configuration, validation, the notify FIFO, the process.

The agent writes keepalived's configuration itself (one ``vrrp_instance``),
checks it with ``keepalived -t`` inside the amphora's network namespace, runs
keepalived in the foreground as a supervised child and learns every VRRP state
change from keepalived's notify FIFO (lines like ``INSTANCE "amphora" MASTER 100``),
read in the reactor.

Traps this module exists to avoid (measured with keepalived 2.2.7):

- ``auth_pass`` is silently cut to 8 characters, so two secrets that share
  their first 8 characters would authenticate each other: the configured value
  is an 8-character HMAC of the whole secret (``auth_pass``), never the secret.
- A SIGHUP with a configuration keepalived cannot load kills it without
  releasing the VIP: every configuration is checked with ``keepalived -t``
  (any warning counts as a failure: exit status 5) before it replaces the live
  file, and only then is keepalived started or signalled.
- After a SIGKILL the VIP stays on the dead node: when keepalived exits, the
  agent removes ``ha_ip`` from the interface itself.
- Both peers must carry identical virtual address lists, or both become
  MASTER: the list is exactly ``ha_ip`` on both (nothing node-specific).
- ``script_user`` must precede ``notify_fifo`` in ``global_defs``, or a reload
  fails to set the script user and silently drops the track script.
- ``nopreempt`` is ignored (with a warning) for ``state MASTER``: both roles
  start as ``state BACKUP`` and the role only sets the priority, so a node
  that recovers after a failover does not take the VIP back (no second blip).
- VRRPv3 (needed for sub-second ``advert_int`` and for IPv6) has no
  authentication; keepalived ignores the block with a warning, so it is not
  rendered then.
"""


from amphora.keepalived.config import (CHECK_NAME, DEFAULT_PRIORITY, ENV, INSTANCE, VRRPSettings, auth_pass,
                                       default_router_id, format_interval, needs_vrrp3, render_check_script,
                                       render_config)
from amphora.keepalived.notify import VRRP_STATES, NotifyEvent, NotifyFifo, parse_notify_line
from amphora.keepalived.service import Keepalived, KeepalivedService, Paths

__all__ = ["CHECK_NAME", "DEFAULT_PRIORITY", "ENV", "INSTANCE", "VRRP_STATES", "Keepalived", "KeepalivedService",
           "NotifyEvent", "NotifyFifo", "Paths", "VRRPSettings", "auth_pass", "default_router_id",
           "format_interval", "needs_vrrp3", "parse_notify_line", "render_check_script", "render_config"]
