"""The operator's web page in a real headless Chromium (Debian's chromium + chromedriver, selenium):
a whole rl episode from the page (start, label), the e-stop and its release, the camera views and
the success curve, against the rl_finetune graph on the twin; and the token when bound beyond loopback."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from vla_robot.operator.console import Console
from vla_robot.operator.web import OperatorWeb, is_loopback

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class NoRos:
    """The web server's other half where no graph is needed: no views, commands counted."""

    def __init__(self):
        self.commands = []

    def execute(self, cmd):
        self.commands.append(cmd)

    def view(self, camera):
        return None


def get(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_token_is_needed_beyond_loopback_and_checked_when_given():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    # bound wider, a token is made up (not started here: nothing leaves this machine in a test)
    wide = OperatorWeb(Console(), NoRos(), host="0.0.0.0", port=0)
    try:
        assert wide.token and len(wide.token) >= 16 and f"?token={wide.token}" in wide.url
    finally:
        wide.httpd.server_close()
    node = NoRos()
    web = OperatorWeb(Console(), node, host="127.0.0.1", port=0, token="s3cret").start()
    base = f"http://127.0.0.1:{web.port}"
    try:
        assert get(base + "/")[0] == 403 and get(base + "/api/state?token=wrong")[0] == 403
        assert get(base + "/api/key", b'{"key": "e"}')[0] == 403 and node.commands == []
        code, body = get(base + "/api/state?token=s3cret")
        assert code == 200 and json.loads(body)["estopped"] is False
        code, _ = get(base + "/api/key", b'{"key": "e"}', {"X-Operator-Token": "s3cret"})
        assert code == 200 and [c.kind for c in node.commands] == ["estop"]
        assert get(base + "/api/key?token=s3cret", b'{"key": "long"}')[0] == 400
        assert get(base + "/api/key?token=s3cret", b'{"key": "q"}')[0] == 200 and len(node.commands) == 1
    finally:
        web.close()
    open_web = OperatorWeb(Console(), NoRos(), port=0).start()  # loopback: no token
    try:
        assert open_web.token is None and get(f"http://127.0.0.1:{open_web.port}/")[0] == 200
    finally:
        open_web.close()


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not installed")
def test_a_whole_rl_episode_and_the_estop_from_the_web_page_in_headless_chromium(ros_context, tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("mujoco")
    torch = pytest.importorskip("torch")
    webdriver = pytest.importorskip("selenium.webdriver")
    from rclpy.executors import MultiThreadedExecutor
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vla_robot.nodes.runner import GraphRunner
    from vla_robot.operator.ros import OperatorNode

    torch.set_num_threads(1)
    console = Console()
    node = OperatorNode(console, cameras=("front", "wrist"), context=ros_context)
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    web = OperatorWeb(console, node, port=0, token="t0ken", cameras=("front", "wrist")).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=480,900",
              f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(a)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)

    def text(id_):
        return browser.find_element(By.ID, id_).text

    try:
        with GraphRunner("rl_finetune", sim=True, serve_policy="tiny", exclude=("recorder_node", "teleop_node"),
                         overrides={"episode_manager_node": {"label_source": "human", "autostart": False,
                                                             "max_duration_s": 1.0, "label_timeout_s": 120.0},
                                    "twin_node": {"realtime_factor": 1.0}}) as g:
            browser.get(web.url)
            assert browser.title == "vla-robot operator"
            assert WebDriverWait(browser, 30).until(lambda _: node.clients_["start"].service_is_ready())
            browser.find_element(By.ID, "start-btn").click()
            wait.until(lambda _: "ended" in text("phase"))  # ran 1 s, waits for a person's label
            assert text("episode") == "0" and text("start") != "-" and not g.results
            # the camera views came through, downscaled
            wait.until(lambda _: browser.execute_script(
                "const i = document.getElementById('view-front'); return i && i.complete && i.naturalWidth > 0"))
            assert 0 < browser.execute_script("return document.getElementById('view-front').naturalWidth") <= 160
            browser.find_element(By.ID, "success").click()
            (r,) = g.wait_for_results(1, timeout_s=30)
            assert (r.index, r.label, r.label_source) == (0, "success", "human")
            wait.until(lambda _: "v0 1/1" in text("rates") and "saved as success" in text("last"))
            assert browser.execute_script("return document.querySelectorAll('#curve circle').length") == 1
            assert console.latency_histogram()["n"] > 0  # chunks came, stamped with their observation
            heights = browser.execute_script(
                "return [...document.querySelectorAll('#hist rect')].map(r => +r.getAttribute('height'))")
            assert len(heights) == len(console.latency_histogram()["counts"]) and max(heights) > 0
            # the large e-stop latches in the graph; the page says so; release clears it
            browser.find_element(By.ID, "estop").click()
            em = g.episode_manager
            wait.until(lambda _: em.core.estopped is not None and "LATCHED" in text("banner"))
            browser.find_element(By.ID, "start-btn").click()
            wait.until(lambda _: "e-stop" in text("message") and "refused" in text("message"))
            browser.find_element(By.ID, "release").click()
            wait.until(lambda _: em.core.estopped is None and "clear" in text("banner"))
    finally:
        browser.quit()
        web.close()
        ex.shutdown()
        node.destroy_node()


@pytest.mark.ros
def test_operator_serves_the_page_from_the_command_line_and_stops_cleanly():
    """`vla-robot operator --web PORT` without a terminal: the page is the console; Ctrl-C ends it, exit 0."""
    pytest.importorskip("rclpy")
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    p = subprocess.Popen([sys.executable, "-m", "vla_robot.cli", "operator", "--web", "127.0.0.1:0"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert line.startswith("operator web page: http://127.0.0.1:"), line + p.stdout.read()
        code, body = get(line.split()[-1] + "api/state")
        assert code == 200 and "vla-robot operator" in json.loads(body)["lines"][0]
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in out, out
