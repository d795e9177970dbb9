"""Headless Chromium driven through its DevTools protocol (aiohttp's WebSocket client; no WebDriver needed).

``async with Browser(tmp) as page: await page.goto(url); await page.eval("1 + 1")``; :meth:`Page.screenshot`
writes a PNG.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page:
    """One page target: send DevTools commands, evaluate JavaScript."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        cid = next(self._ids)
        await self.ws.send_str(json.dumps({"id": cid, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=30)).data)
            if msg.get("id") == cid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def goto(self, url: str, timeout_s: float = 20.0) -> None:
        """Open ``url`` and wait until the document is loaded."""
        await self.send("Page.navigate", url=url)
        for _ in range(int(timeout_s / 0.05)):
            if await self.eval("document.readyState") == "complete":
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{url} did not load in {timeout_s} s")

    async def type_text(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` as keyboard input."""
        await self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the page, written to ``path``."""
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


class Browser:
    """Headless Chromium with one page, for ``async with``."""

    def __init__(self, profile: Path, width: int = 1000, height: int = 1100) -> None:
        self.profile = profile
        self.size = f"{width},{height}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Page:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={self.size}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        page = Page(await self.session.ws_connect(ws_url, max_msg_size=0))
        await page.send("Page.enable")
        return page

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
