"""The operator console as a web page, served by the operator process (a phone at the robot can label).

The page shows the camera views (downscaled), the episode state and the start condition to set up,
the same keys as buttons with a large E-STOP, the success rate per policy version as a curve, and the
histogram of observation-to-chunk latencies. It has no state of its own: it polls ``/api/state`` and
posts keys to ``/api/key``, which go through the same :class:`Console` and ROS side as the terminal's.

Loopback by default. Bound wider, every request needs the token (``?token=...``, or the
``X-Operator-Token`` header): one is made up and printed unless given.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

__all__ = ["OperatorWeb", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OperatorWeb:
    """An HTTP server for one console and its ROS side (``node.execute``, ``node.view``)."""

    def __init__(self, console, node, host: str = "127.0.0.1", port: int = 8088, token: str | None = None,
                 cameras: tuple[str, ...] = ()):
        if token is None and not is_loopback(host):
            token = secrets.token_urlsafe(16)  # bound beyond this machine: never without a token
        self.console, self.node, self.token, self.cameras = console, node, token, tuple(cameras)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> "OperatorWeb":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="operator-web")
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def allowed(self, given: str | None) -> bool:
        return self.token is None or (given is not None and hmac.compare_digest(given, self.token))


def _handler(web: OperatorWeb):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the console's own output stays readable
            pass

        def _token_ok(self, query: dict) -> bool:
            given = self.headers.get("X-Operator-Token") or (query.get("token") or [None])[0]
            if web.allowed(given):
                return True
            self._send(403, b"a token is needed: open the URL the operator printed (...?token=...)\n", "text/plain")
            return False

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            if not self._token_ok(parse_qs(url.query)):
                return
            if url.path == "/":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/state":
                state = web.console.snapshot()
                state["cameras"] = list(web.cameras)
                self._send(200, json.dumps(state, default=str).encode(), "application/json")
            elif url.path.startswith("/api/camera/"):
                jpg = web.node.view(url.path.rsplit("/", 1)[-1].removesuffix(".jpg"))
                if jpg is None:
                    self._send(404, b"no image from this camera yet\n", "text/plain")
                else:
                    self._send(200, jpg, "image/jpeg")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if not self._token_ok(parse_qs(url.query)):
                return
            if url.path != "/api/key":
                self._send(404, b"not found\n", "text/plain")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                key = body["key"]
                if not isinstance(key, str) or len(key) != 1:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                self._send(400, b'expected JSON {"key": "<one character>"}\n', "text/plain")
                return
            cmd = web.console.key(key)
            if cmd is not None and cmd.kind != "quit":  # the page cannot end the operator process
                web.node.execute(cmd)
            self._send(200, json.dumps({"message": web.console.message}).encode(), "application/json")

    return Handler


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vla-robot operator</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 0.8em; background: #fafafa; color: #222; }
 #estop { width: 100%; font-size: 2em; font-weight: bold; padding: 0.6em; background: #c00; color: #fff;
          border: 0.15em solid #600; border-radius: 0.4em; }
 #banner { font-weight: bold; padding: 0.4em; margin: 0.4em 0; }
 #banner.latched { background: #c00; color: #fff; }
 .keys button { font-size: 1.2em; padding: 0.6em 0.9em; margin: 0.2em; min-width: 5em; }
 #views img { height: 8em; margin-right: 0.3em; image-rendering: pixelated; background: #ddd; }
 .row { margin: 0.3em 0; }  #message { color: #555; min-height: 1.2em; }
 svg { background: #fff; border: 1px solid #ccc; }
</style></head>
<body>
<button id="estop" data-key="e">E-STOP</button>
<div id="banner">e-stop: clear</div>
<div class="row"><b>episode <span id="episode">-</span></b>: <span id="phase">-</span></div>
<div class="row">start condition: <b id="start">-</b> &nbsp; instruction: <span id="instruction">-</span></div>
<div class="row">policy version: <b id="version">-</b> &nbsp; last: <span id="last">-</span></div>
<div class="keys">
 <button id="start-btn" data-key=" ">Start / reset done</button>
 <button id="success" data-key="s">Success</button>
 <button id="failure" data-key="f">Failure</button>
 <button id="discard" data-key="d">Discard</button>
 <button id="stop" data-key="x">Stop</button>
 <button id="takeover" data-key="t">Take over / hand back</button>
 <button id="release" data-key="r">Release e-stop</button>
</div>
<div id="message"></div>
<div id="views"></div>
<h4>success per policy version</h4><svg id="curve" width="320" height="120"></svg>
<div id="rates"></div>
<h4>latency, observation to chunk (ms)</h4><svg id="hist" width="320" height="120"></svg>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
async function key(k) {
  const r = await fetch("/api/key" + q, {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({key: k})});
  $("message").textContent = (await r.json()).message || "";
}
document.querySelectorAll("button[data-key]").forEach((b) => b.onclick = () => key(b.dataset.key));
function bars(svg, values, labels) {
  const w = +svg.getAttribute("width"), h = +svg.getAttribute("height"), n = values.length || 1;
  const top = Math.max(1, ...values);
  svg.innerHTML = values.map((v, i) => `<rect x="${i * w / n + 1}" y="${h - 14 - (h - 20) * v / top}"
      width="${w / n - 2}" height="${(h - 20) * v / top}" fill="#47a"></rect>
      <text x="${i * w / n + 2}" y="${h - 2}" font-size="9">${labels[i]}</text>`).join("");
}
function curve(svg, points) {
  const w = +svg.getAttribute("width"), h = +svg.getAttribute("height"), n = Math.max(1, points.length - 1);
  const xy = points.map((p, i) => [10 + (w - 20) * i / n, h - 15 - (h - 25) * p[1]]);
  svg.innerHTML = `<polyline fill="none" stroke="#2a2" stroke-width="2" points="${xy.map(p => p.join(",")).join(" ")}"/>`
    + xy.map((p, i) => `<circle cx="${p[0]}" cy="${p[1]}" r="3" fill="#2a2"/>
       <text x="${p[0] - 6}" y="${h - 2}" font-size="9">${points[i][0]}</text>`).join("");
}
const views = {};
async function refresh() {
  try {
    const s = await (await fetch("/api/state" + q)).json();
    $("episode").textContent = s.episode ?? "-";
    $("phase").textContent = s.phase;
    $("start").textContent = s.start_condition ?? "-";
    $("instruction").textContent = s.instruction || "-";
    $("version").textContent = s.version === null ? "-" : "v" + s.version;
    $("last").textContent = s.last || "-";
    if (s.message) $("message").textContent = s.message;
    $("banner").textContent = s.estopped ? "E-STOP LATCHED: nothing moves (Release to clear)" : "e-stop: clear";
    $("banner").className = s.estopped ? "latched" : "";
    $("takeover").textContent = s.intervening ? "Hand back (teleop drives)" : "Take over";
    const pts = s.by_version.filter(r => r[1] + r[2] > 0).map(r => ["v" + (r[0] ?? "?"), r[1] / (r[1] + r[2])]);
    curve($("curve"), pts);
    $("rates").textContent = s.by_version.map(r => `v${r[0] ?? "?"} ${r[1]}/${r[1] + r[2]}`).join(", ");
    bars($("hist"), s.latency.counts, s.latency.edges_ms.map((e, i) => i + 1 < s.latency.edges_ms.length ? e : e + "+"));
    for (const cam of s.cameras) {
      if (!views[cam]) { views[cam] = document.createElement("img"); views[cam].alt = cam; views[cam].id = "view-" + cam;
                         $("views").appendChild(views[cam]); }
      views[cam].src = "/api/camera/" + cam + ".jpg" + q + (q ? "&" : "?") + "t=" + Date.now();
    }
  } catch (e) { $("message").textContent = "no answer from the operator process"; }
}
setInterval(refresh, 500); refresh();
</script></body></html>
"""
