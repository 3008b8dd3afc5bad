"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-terminated JSON messages on file descriptors 3 and 4), so tests can load a page, run JavaScript
in it, click, and take screenshots with nothing but Debian's ``chromium`` package and the standard
library (no websocket client, no browser downloads)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The first Chromium-like executable on PATH."""
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class ChromiumUnavailable(RuntimeError):
    """No Chromium, and it could not be installed; the message says why (apt's own error lines)."""


def apt_failure(command: list[str], result: subprocess.CompletedProcess, lines: int = 8) -> str:
    """One line per failed apt command: the command, its exit status and the last ``lines`` lines it
    printed (apt's "E: ..." and "W: ..." lines say why: offline mirror, unknown package, lock)."""
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-lines:]
    return f"`{' '.join(command)}` exited {result.returncode}: " + (" | ".join(said) or "no output")


def install_chromium() -> str:
    """The Chromium executable, installing Debian's ``chromium`` package when it is missing (needs root
    and apt-get); raises :class:`ChromiumUnavailable` with the reason, apt's output included."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ChromiumUnavailable(f"no Chromium on PATH ({', '.join(CANDIDATES)}), and installing Debian's "
                                  "package needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, timeout in ((["apt-get", "update", "-qq"], 600),
                             (["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], 900)):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ChromiumUnavailable(apt_failure(command, result))
    found = find_chromium()
    if found is None:
        raise ChromiumUnavailable(f"apt-get installed 'chromium' but none of {', '.join(CANDIDATES)} is on PATH")
    return found


class Browser:
    """One headless Chromium with one page: ``open(url)``, ``evaluate(js)``, ``screenshot(path)``."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="chromium-")

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 (commands in) and 4 (replies out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self._proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "--no-first-run", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_pipes,  # dup2'ed there before the other fds are closed
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self._call("Page.enable", session=True)
        self._call("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def _call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(f"{method}: no reply within {timeout} s")

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        self._call("Page.navigate", {"url": url}, session=True)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited); page errors raise."""
        result = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                 "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 30) -> None:
        """Poll the JavaScript ``condition`` until it is true."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never satisfied {condition!r}")
            time.sleep(0.1)

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self._call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        self._proc.kill()
        self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
