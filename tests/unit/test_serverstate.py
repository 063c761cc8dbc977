"""The pure parts of member health across reloads (``amphora.listeners.serverstate``)."""

from __future__ import annotations

from amphora.listeners import serverstate
from amphora.listeners.serverstate import ADDED, agent_loads, carry, chooses, running_text, server_keys

CONFIG = b"""global
    maxconn 100

defaults
    mode http
    default-server inter 2s

frontend f
    bind 127.0.0.1:8080
    default_backend p

backend p
    server a 127.0.0.1:81 check
    server b 127.0.0.1:82 check

listen l
    bind 127.0.0.1:8081
    server c 127.0.0.1:83
"""

HEADER = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
          "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
          "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl "
          "srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n")
ROWS = {
    "a": "3 p 1 a 127.0.0.1 0 0 1 1 6 8 2 0 6 0 0 0 - 81 - 0 0 - - 0",
    "b": "3 p 2 b 127.0.0.1 2 0 1 1 6 6 3 4 6 0 0 0 - 82 - 0 0 - - 0",
    "c": "4 l 1 c 127.0.0.1 0 1 1 1 6 8 2 0 6 0 0 0 - 83 - 0 0 - - 0",
}
STATE = HEADER + "".join(r + "\n" for r in ROWS.values())


def _kept(data: bytes) -> set[str]:
    return {line.split()[3] for line in data.decode().splitlines() if line[:1].isdigit() and len(line.split()) > 3}


def test_the_running_copy_loads_the_state_in_each_backend_and_listen_section():
    text = running_text(CONFIG, "/run/x/servers.state")
    lines = text.decode().splitlines()
    assert lines[lines.index("backend p") + 1] == ADDED
    assert lines[lines.index("listen l") + 1] == ADDED
    assert text.count(ADDED.encode()) == 2  # not in global, defaults or the frontend
    assert text.replace(ADDED.encode() + b"\n", b"") == CONFIG  # nothing else changes
    assert serverstate.loads_state(text) and agent_loads(text) and not agent_loads(CONFIG)
    assert running_text(text, "/run/x/servers.state") == text  # a running copy stays as it is


def test_an_upload_that_chooses_or_has_no_state_file_runs_as_it_came():
    for value in (b"global", b"local", b"none"):
        chosen = CONFIG.replace(b"    mode http\n", b"    mode http\n    load-server-state-from-file " + value + b"\n")
        assert chooses(chosen)
        assert running_text(chosen, "/run/x/servers.state") == chosen
    assert running_text(CONFIG, None) == CONFIG
    strict = CONFIG.replace(b"    maxconn 100\n", b"    maxconn 100\n    zero-warning\n")
    assert running_text(strict, "/run/x/servers.state") == strict  # a DOWN from the file would be fatal
    commented = CONFIG.replace(b"backend p\n", b"backend p # load-server-state-from-file none\n")
    assert not chooses(commented)  # a comment is not a choice


def test_line_endings_and_a_last_line_without_one_are_kept():
    crlf = CONFIG.replace(b"\n", b"\r\n")
    text = running_text(crlf, "/s")
    assert b"backend p\r\n" + ADDED.encode() + b"\r\n" in text
    assert text.replace(ADDED.encode() + b"\r\n", b"") == crlf
    bare = b"backend empty"
    assert running_text(bare, "/s") == b"backend empty\n" + ADDED.encode() + b"\n"
    latin = CONFIG.replace(b"maxconn 100", b"maxconn 100 # caf\xe9")
    assert running_text(latin, "/s").replace(ADDED.encode() + b"\n", b"") == latin  # bytes kept as they are


def test_unchanged_servers_keep_their_state_changed_ones_start_afresh():
    new = CONFIG.replace(b"127.0.0.1:82", b"127.0.0.1:92")  # b moves to another port
    kept = carry(STATE, running_text(CONFIG, "/s"), running_text(new, "/s"))
    assert kept.decode().startswith(HEADER)
    assert _kept(kept) == {"a", "c"}
    assert _kept(carry(STATE, CONFIG, CONFIG)) == {"a", "b", "c"}


def test_what_a_server_inherits_is_part_of_its_definition():
    assert _kept(carry(STATE, CONFIG, CONFIG.replace(b"default-server inter 2s", b"default-server ssl verify none"))) \
        == set()
    in_backend = CONFIG.replace(b"backend p\n", b"backend p\n    default-server port 9000\n")
    assert _kept(carry(STATE, CONFIG, in_backend)) == {"c"}
    removed = CONFIG.replace(b"    server a 127.0.0.1:81 check\n", b"")
    assert _kept(carry(STATE, CONFIG, removed)) == {"b", "c"}
    renamed = CONFIG.replace(b"backend p\n", b"backend q\n")
    assert _kept(carry(STATE, CONFIG, renamed)) == {"c"}
    assert _kept(carry(STATE, None, CONFIG)) == set()  # nothing known about what ran: nothing carried


def test_named_defaults_and_from():
    config = b"""defaults base
    default-server inter 1s
defaults other from base
    mode http
backend p from base
    server a 127.0.0.1:81
backend q from other
    server b 127.0.0.1:82
"""
    keys = server_keys(config)
    assert keys[("p", "a")][0][0] == (("default-server", "inter", "1s"),)
    assert keys[("q", "b")][0][0] == (("default-server", "inter", "1s"),)
    changed = config.replace(b"inter 1s", b"inter 5s")
    assert not set(keys.items()) & set(server_keys(changed).items())


def test_a_garbled_state_keeps_only_what_it_can_match():
    assert carry("garbage\n# a b\n1 2\n", CONFIG, CONFIG) == b"# a b\n"
    assert carry("", CONFIG, CONFIG) == b"1\n"


def test_runtime_commands_from_a_saved_state():
    state = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 p:l 1 up 127.0.0.1 2 0 1 1 6 6 3 4 6 0 0 0 - 80 - 0 0 - - 0
3 p:l 2 down 127.0.0.1 0 0 1 1 6 8 2 0 6 0 0 0 - 81 - 0 0 - - 0
3 p:l 3 maint 127.0.0.1 0 1 1 1 6 8 2 0 6 0 0 0 - 82 - 0 0 - - 0
3 p:l 4 drain 127.0.0.1 2 8 1 1 6 6 3 4 6 0 0 0 - 83 - 0 0 - - 0
"""
    assert serverstate.commands(state) == ["set server p:l/down health down", "set server p:l/maint state maint",
                                           "set server p:l/drain state drain"]
    assert serverstate.commands("garbage\n# a b\n1 2\n") == []
    # nothing to push to a process that loads the file itself
    assert serverstate.pending(state.encode(), running_text(CONFIG, "/s")) == []
    assert len(serverstate.pending(state.encode(), CONFIG)) == 3
