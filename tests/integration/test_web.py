"""The web page in a real browser (issue 13): headless Chromium from Debian's `chromium` package, driven by
Playwright for Python (its own browser download cannot work here: `executable_path` points at Debian's).

A daemon serves over TCP with TLS (`CORRAL_LISTEN`, as `corrald --listen`); the test logs in on the page, launches
a `--display vnc` VM from the page, types `uname -a` in the serial console (xterm.js) and reads `Linux` in the
page's terminal, opens the graphical console (noVNC) and reads non-blank pixels off its canvas, and checks that a
viewer of another project sees no VM of this one. With CORRAL_WEB_SCREENSHOTS=DIR it saves a screenshot of each
page there (docs/screenshots/ holds the committed ones).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CorralEnv, start_daemon_with, until

CHROMIUM = "/usr/bin/chromium"


# No skip: scripts/setup.sh installs Debian's chromium and the dev extra Playwright, so a missing one is a failure here.
pytestmark = [pytest.mark.vm]

PASSWORD = "correct horse battery staple"
SHOTS = os.environ.get("CORRAL_WEB_SCREENSHOTS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_tls(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, ctx.wrap_socket(raw):
            return True
    except OSError:
        return False


@pytest.fixture
def web(corral_home: CorralEnv) -> Iterator[tuple[CorralEnv, str]]:
    """A daemon listening on TCP loopback with TLS, users alice (operator of project web) and vic (viewer of
    project other); yields it and the page's URL."""
    port = free_port()
    c = start_daemon_with(corral_home, {"CORRAL_LISTEN": f"127.0.0.1:{port}"})
    until(lambda: serving_tls(port), 30, "corrald's TCP listener")
    for user, role, project in (("alice", "operator", "web"), ("vic", "viewer", "other")):
        r = c.cli("user", "add", user, "--role", role, "--project", project, "--password-stdin",
                  input=f"{PASSWORD}\n".encode())
        assert r.returncode == 0, r.stderr
    yield c, f"https://127.0.0.1:{port}"


@pytest.fixture
def page(web: tuple[CorralEnv, str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield pg
        finally:
            browser.close()
        assert not errors, errors  # no script error on any page


# --- the steps, on a page at `base` (also run by scripts/web_screenshots.py) -------------------------------------

def shot(pg: Any, name: str, where: str | None = SHOTS) -> None:
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)  # let the page settle (fonts, a last event)
        pg.screenshot(path=str(Path(where) / f"{name}.png"))


def login(pg: Any, base: str, user: str, password: str, shots: str | None = SHOTS) -> None:
    pg.goto(base + "/")
    pg.fill("input[name=user]", user)
    pg.fill("input[name=password]", "not the password")
    pg.click("button[type=submit]")
    error = pg.wait_for_selector(".error")
    assert error.inner_text() and "\n" not in error.inner_text()  # the API's one line
    shot(pg, "login", shots)
    pg.fill("input[name=password]", password)
    pg.click("button[type=submit]")
    pg.wait_for_selector("[data-testid=vm-list]")
    assert user in pg.inner_text("[data-testid=whoami]")


def launch_from_page(pg: Any, name: str, project: str, shots: str | None = SHOTS) -> None:
    pg.click("a[href='#/new']")
    pg.fill("input[name=name]", name)
    pg.select_option("select[name=display]", "vnc")
    pg.fill("input[name=project]", project)
    pg.fill("input[name=labels]", "env=test,app=<b>web</b>")  # refused by the API: its one line, as text
    pg.click("button[type=submit]")
    error = pg.wait_for_selector(".error")
    assert "<b>web</b>" in error.inner_text() and pg.query_selector(".error b") is None
    pg.fill("input[name=labels]", "env=test,app=web")
    pg.fill("input[name=description]", "<img src=x onerror=window.pwned=1> a <b>bold</b> claim")
    shot(pg, "create", shots)
    pg.click("button[type=submit]")
    pg.wait_for_selector("[data-testid=vm-name]")
    pg.wait_for_selector("[data-testid=state]:has-text('running')", timeout=120_000)
    grid = pg.inner_text(".grid")
    assert "app=web" in grid and "<b>bold</b>" in grid  # shown as text, never markup
    assert pg.query_selector(".grid img, .grid b") is None and pg.evaluate("() => window.pwned") is None
    shot(pg, "vm", shots)


def terminal_text(pg: Any) -> str:
    text: str = pg.evaluate("""() => { const b = window.corralTerminal.buffer.active; let s = '';
        for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + '\\n'; return s; }""")
    return text


def serial_uname(pg: Any, shots: str | None = SHOTS) -> None:
    pg.click("text=Serial console")
    pg.wait_for_selector("[data-testid=console-status]:has-text('connected')", timeout=30_000)
    pg.click("[data-testid=terminal]")

    def prompt() -> bool:  # the guest's shell is up: its prompt (an Enter asks for a fresh one)
        if terminal_text(pg).rstrip().endswith("#"):
            return True
        pg.keyboard.press("Enter")
        time.sleep(2)
        return terminal_text(pg).rstrip().endswith("#")

    until(prompt, 120, "the guest shell's prompt in the page's terminal")
    pg.keyboard.type("uname -a\n")

    def answered() -> bool:
        return "Linux" in terminal_text(pg)

    until(answered, 30, "`uname -a` answered in the page's terminal")
    shot(pg, "serial", shots)


def canvas_lit(pg: Any) -> int:
    n: int = pg.evaluate("""() => { const c = document.querySelector('[data-testid=screen] canvas');
        if (!c || !c.width) return 0; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] || d[i + 1] || d[i + 2]) n++; return n; }""")
    return n


def graphical_console(pg: Any, shots: str | None = SHOTS) -> None:
    pg.click("text=Graphical console")
    pg.wait_for_selector("[data-testid=vnc-status]:has-text('connected')", timeout=30_000)
    until(lambda: canvas_lit(pg) > 100, 60, "a non-blank canvas in the graphical console")
    shot(pg, "vnc", shots)


def websocket_close_code(pg: Any, base: str, path: str) -> int:
    """The close code of a websocket opened by the page without a ticket."""
    url = base.replace("https://", "wss://").replace("http://", "ws://") + path
    code: int = pg.evaluate("""(url) => new Promise((ok) => { const ws = new WebSocket(url);
        ws.onclose = (e) => ok(e.code); })""", url)
    return code


def list_names(pg: Any) -> list[str]:
    pg.click("a[href='#/']")
    pg.wait_for_selector("[data-testid=vm-list] tbody tr")
    names: list[str] = pg.eval_on_selector_all("[data-testid=vm-list] tr[data-vm]",
                                               "rows => rows.map(r => r.dataset.vm)")
    return names


# --- the test ------------------------------------------------------------------------------------------------------

def test_web_page_consoles_and_projects(web: tuple[CorralEnv, str], page: Any) -> None:
    c, base = web
    login(page, base, "alice", PASSWORD)
    launch_from_page(page, "webvm", "web")
    serial_uname(page)
    graphical_console(page)
    for path in ("/v1/vms/webvm/console?ticket=forged", "/v1/vms/webvm/vnc?ticket=forged"):
        assert websocket_close_code(page, base, path) == 4001, path  # the route's refusal of a bad ticket
    for path in ("/v1/vms/webvm/console", "/v1/vms/webvm/vnc"):
        # without a ticket: refused by the route (4001) or before it by auth's gate (4401, or the upgrade itself
        # answered 403, which a browser sees as 1006)
        assert websocket_close_code(page, base, path) in (4001, 4401, 1006), path
    assert "webvm" in list_names(page)
    shot(page, "list")
    page.click("text=Log out")
    login(page, base, "vic", PASSWORD, shots=None)
    until(lambda: page.query_selector("[data-testid=vm-list] td.empty"), 30, "vic's list loaded")
    assert list_names(page) == []  # a viewer of project other sees no VM of project web
    r = httpx.get(f"{base}/v1/vms", verify=False, headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401 and "\n" not in r.json()["message"]

