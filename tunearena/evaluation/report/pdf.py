"""report.html printed to report.pdf by a headless Chromium.

A real browser engine prints the page, so the PDF is the same page a reader opens: the same
layout and plots, with the page's print stylesheet (page breaks that keep tables, figures and
headings whole, collapsed sections shown open). Chromium is run as a command
(``--headless --print-to-pdf``), not driven through Playwright: a printed report then needs
only a Chromium on the machine, not a Python package that tunearena installs for its tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tunearena.errors import UserError

CHROMIUM_ENV = "TUNEARENA_CHROMIUM"
"""Names the Chromium (or Chrome) executable to print with, when it is not on PATH."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executables looked for on PATH, in this order."""

CHROMIUM_APPS = (
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
)
"""Where macOS installs the browsers, which put nothing on PATH."""

PRINT_TIMEOUT_S = 120.0
"""How long Chromium may take to start, load the page and print it (a few seconds usually)."""

# Headless, offline and quiet: without the background-networking flags Chromium keeps trying
# to reach Google's hosts. --no-sandbox: the page is our own file, and the sandbox cannot start
# as root or where user namespaces are barred (containers, some CI). A fresh profile per print
# (--user-data-dir) means no other Chromium's lock or settings are involved.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-pdf-header-footer",
)


class PdfError(UserError):
    """No Chromium to print with, or the one found failed to print."""


def find_chromium() -> str:
    """The Chromium to print with: ``$TUNEARENA_CHROMIUM``, else the first of
    ``CHROMIUM_NAMES`` on PATH, else a macOS app; ``PdfError`` naming what to install if none."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise PdfError(f"{CHROMIUM_ENV}={named}: no such executable; point it at a Chromium "
                           "or Chrome binary, or unset it to look on PATH")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    for app in CHROMIUM_APPS:
        if os.access(app, os.X_OK):
            return app
    raise PdfError(
        "--pdf prints report.html with a headless Chromium, and none was found (looked for "
        f"{', '.join(CHROMIUM_NAMES)} on PATH); install one (Debian/Ubuntu: apt-get install "
        "chromium; macOS: brew install --cask chromium) or set "
        f"{CHROMIUM_ENV} to a Chromium or Chrome executable")


def write_pdf(html: Path, chromium: str | None = None,
              timeout_s: float = PRINT_TIMEOUT_S) -> Path:
    """Print ``html`` to a PDF of the same name beside it (``report.html`` -> ``report.pdf``)
    with ``chromium`` (default: ``find_chromium()``); returns its path.

    Chromium prints to a unique temp name in the same directory, renamed over the PDF only once
    it is a whole PDF file: a failed or killed print leaves the previous PDF as it was. A
    Chromium that fails, times out or writes no PDF raises ``PdfError`` with its last words.
    """
    html = Path(html).resolve()
    chromium = chromium or find_chromium()
    out = html.with_suffix(".pdf")
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tempfile.TemporaryDirectory(prefix="tunearena-chromium-") as profile:
            returncode, stderr = _run(
                [chromium, *_FLAGS, f"--user-data-dir={profile}", f"--print-to-pdf={tmp}",
                 html.as_uri()], timeout_s)
        if returncode is None:
            raise PdfError(f"{chromium} took over {timeout_s:.0f} s to print {html}; "
                           f"{out.name} not written")
        if returncode != 0 or not _is_pdf(tmp):
            # Chromium logs its missing D-Bus and the like on every start; keep what is not that.
            said = [line for line in stderr.splitlines() if line.strip() and "dbus" not in line]
            raise PdfError(f"{chromium} did not print {html} (exit {returncode}); {out.name} "
                           "not written" + ("; it said:\n" + "\n".join(said[-5:]) if said else ""))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _run(command: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run ``command``; its exit status (None when it ran past ``timeout_s``) and stderr.

    Chromium starts helper processes (zygote, renderer); it runs in a process group of its own
    so that a timeout, or Ctrl-C here, ends all of them rather than only the first.
    """
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
    except OSError as e:
        raise PdfError(f"{command[0]}: could not be run ({e.strerror})") from None
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except BaseException as e:  # a timeout, or Ctrl-C: the group goes before its leader is reaped
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            return None, ""
        raise
    return proc.returncode, stderr


def _is_pdf(path: Path) -> bool:
    """Whether ``path`` is a PDF file, judged by its header."""
    try:
        with path.open("rb") as f:
            return f.read(5) == b"%PDF-"
    except OSError:
        return False
