"""systemd service notification (``Type=notify``) and journal-friendly logging.

When systemd starts the daemon with ``NOTIFY_SOCKET`` set, goblinfs tells it:

* ``READY=1`` once the mount answers: the FUSE session is up and a ``stat`` of the
  mountpoint's root came back through it (``goblinfs.mount._serve``);
* ``STATUS=serving MOUNTPOINT: N uploads pending, M journaled`` right then and every
  ``STATUS_INTERVAL`` seconds, so ``systemctl status`` shows what the daemon holds;
* ``STOPPING=1`` as soon as it starts to go down (SIGTERM/SIGINT or an unmount from outside),
  then ``STATUS=stopping MOUNTPOINT: ...`` while the pending uploads drain;
* without ``-f`` (the command forks), the parent sends ``MAINPID=<daemon>`` and ``READY=1``
  once the daemon reported ready, so a ``Type=notify`` unit follows the daemon either way.

The messages go through libsystemd's own ``sd_notify`` (the ``cysystemd`` package), which
handles path and abstract (``@name``) sockets.  With ``NOTIFY_SOCKET`` unset nothing at all
is sent and nothing changes.  A notification that cannot be delivered is logged (a warning
once, then at debug level) and never raised: the daemon does not die of its supervisor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import trio

log = logging.getLogger(__name__)

#: Seconds between two STATUS= refreshes while serving and while draining at stop.
STATUS_INTERVAL = 5.0


class Notifier:
    """sd_notify for one process; every method is a no-op when ``NOTIFY_SOCKET`` is unset.

    Contract: methods never raise; ``stopping()`` sends ``STOPPING=1`` at most once.
    """

    def __init__(self, forked: bool = False) -> None:
        """Reads NOTIFY_SOCKET from the environment, where libsystemd's sd_notify reads it too.

        forked: this is the daemon a forking ``goblinfs mount`` started; its parent sends READY=1
        and MAINPID= for it."""
        self.socket = os.environ.get("NOTIFY_SOCKET") or None
        self.forked = forked
        self.stopping_sent = False
        self._warned = False

    @classmethod
    def off(cls) -> Notifier:
        """A notifier that never sends anything, whatever the environment says."""
        notifier = cls()
        notifier.socket = None
        return notifier

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) asked for notifications."""
        return self.socket is not None

    def _send(self, name: str, value: str | int | None = None) -> bool:
        """Send one ``NAME=value`` datagram (``READY`` alone means ``READY=1``); True if delivered."""
        return self._send_lines(f"{name}={1 if value is None else value}")

    def _send_lines(self, *lines: str) -> bool:
        """Send the lines as ONE datagram (systemd checks the sender once per datagram)."""
        if self.socket is None:
            return False
        try:
            # Imported here: without NOTIFY_SOCKET the daemon does not even load libsystemd.
            from cysystemd._daemon import sd_notify

            sd_notify("\n".join(lines))
        except Exception as exc:  # a gone or refusing supervisor must not end the daemon
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "cannot notify systemd at %s (%s): %s", self.socket, ", ".join(lines), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """``READY=1`` (then ``STATUS=status`` if given): the mount answers.

        Nothing from a forked daemon: its parent tells systemd (``forked_ready``)."""
        if not self.forked and self._send("READY") and status:
            self.status(status)

    def forked_ready(self, daemon_pid: int) -> None:
        """From the forking parent: the daemon ``daemon_pid`` is the service's main process, ready."""
        # One datagram: with NotifyAccess=main, systemd takes a message only from the main PID,
        # which MAINPID= changes: a READY=1 sent after it from here would be refused.
        self._send_lines(f"MAINPID={daemon_pid}", "READY=1")

    def status(self, text: str) -> None:
        """``STATUS=text`` (one line: line breaks become spaces)."""
        self._send("STATUS", " ".join(text.split()))

    def stopping(self) -> None:
        """``STOPPING=1``, once."""
        if self.socket is None or self.stopping_sent:
            return
        self.stopping_sent = True
        self._send("STOPPING")


def status_line(doc: dict[str, Any], mountpoint: str, stopping: bool = False) -> str:
    """The STATUS= text for a ``Vfs.status()`` document, e.g.

    ``serving /srv/mnt: 2 uploads pending, 0 journaled`` (``, 1 recovered`` when some are).
    """
    pending = len(doc.get("pending_uploads") or [])
    journaled = len(doc.get("journaled") or [])
    recovered = len(doc.get("recovered") or [])
    noun = "upload" if pending == 1 else "uploads"
    text = f"{'stopping' if stopping else 'serving'} {mountpoint}: {pending} {noun} pending, {journaled} journaled"
    if recovered:
        text += f", {recovered} recovered"
    return text


def safe_status_line(status: Callable[[], dict[str, Any]], mountpoint: str, stopping: bool = False) -> str:
    """status_line of ``status()`` (a ``Vfs.status``); a status that fails gives a line saying so."""
    try:
        return status_line(status(), mountpoint, stopping)
    except Exception as exc:  # the status must never end the daemon
        log.debug("status for systemd failed: %s", exc)
        return f"{'stopping' if stopping else 'serving'} {mountpoint}: status unavailable ({type(exc).__name__})"


async def report_status(notifier: Notifier, status: Callable[[], dict[str, Any]], mountpoint: str,
                        interval: float = STATUS_INTERVAL) -> None:
    """Send STATUS= every ``interval`` seconds until cancelled ("stopping ..." once STOPPING=1 was sent).

    A forked daemon waits one interval first, so its parent's MAINPID= reaches systemd before
    (with ``NotifyAccess=main`` systemd drops messages from any other process).  Run on the trio
    thread: ``status`` reads the Vfs.
    """
    if notifier.forked:
        await trio.sleep(interval)
    while True:
        notifier.status(safe_status_line(status, mountpoint, notifier.stopping_sent))
        await trio.sleep(interval)


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is connected to the journal (systemd sets ``JOURNAL_STREAM=dev:ino``)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` lines: the journal reads the syslog priority N from the prefix and
    stamps the time itself."""

    PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Prefix every line of the record (a traceback spans several) with its priority."""
        priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


__all__ = ["Notifier", "STATUS_INTERVAL", "status_line", "safe_status_line", "report_status", "stderr_is_journal",
           "JournalFormatter"]
