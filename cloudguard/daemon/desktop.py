"""Desktop notifications over D-Bus (``org.freedesktop.Notifications``), so a folder the
daemon stopped, or a conflict copy it made, is seen by the user and not only by the log.

jeepney speaks D-Bus in pure Python (it is already what the Secret Service keyring uses). No
session bus, or no notification server on it, is normal on a headless machine: nothing is
sent, and the state still shows in ``cloudguard status`` and the log. File names never go
into a notification; the folder and a count do.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("cloudguard.daemon")

APP = "cloudguard"
TIMEOUT = 2.0  # seconds: a notification server that does not answer never holds up a sync


def notify(summary: str, body: str, urgent: bool = False) -> bool:
    """True if a notification server took it."""
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return False
    try:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        target = DBusAddress("/org/freedesktop/Notifications",
                             bus_name="org.freedesktop.Notifications",
                             interface="org.freedesktop.Notifications")
        hints = {"urgency": ("y", 2 if urgent else 1)}
        message = new_method_call(target, "Notify", "susssasa{sv}i",
                                  (APP, 0, "dialog-warning" if urgent else "dialog-information",
                                   summary, body, [], hints, -1))
        with open_dbus_connection(bus="SESSION") as connection:
            reply = connection.send_and_get_reply(message, timeout=TIMEOUT)
        return bool(reply.header.message_type.name == "method_return")
    except Exception as exc:  # no server, a bus that went away: the log has it anyway
        log.debug("no desktop notification: %s", type(exc).__name__)
        return False
