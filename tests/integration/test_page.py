"""The trading page (``GET /``) in a real browser: Debian's chromium through its chromedriver,
driven by Selenium, against a real gateway, daemon and server (docs/gateway.md, "The trading
page"). The page's DOM is compared with the engine's ``book:{P}``, through shard crashes and a
Redis restart.

Without chromium and chromedriver the tests are skipped, unless ``CI_BROWSER=1`` (set by
``.ci/run`` once it installed them): then they fail. ``SHARD_SCREENSHOT=<file>`` saves the
screenshot of the live book there as well (``docs/images/gateway.png``).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from shard.config import Keys
from shard.gateway.limits import hash_key
from shard.server import LocalServer

from . import test_gateway
from .helpers import PAIR, publish, start_daemon, stop_daemon, stored_book, wait_events
from .test_gateway import Gateway, daemon  # noqa: F401  (daemon: a fixture used below)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCALE = 10**8
GATEWAY_CONFIG = "rate_per_address = 1000\nburst_per_address = 1000\ndecimals = { BTC-USDT = 2 }\n"
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless chromium for the module, its console log kept."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI_BROWSER") == "1":
            pytest.fail(f"CI_BROWSER=1 but {reason}")
        pytest.skip(reason)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1440,960")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def gateway(server: LocalServer, daemon: None, tmp_path: Path) -> Iterator[Gateway]:  # noqa: F811
    """A gateway without keys, with a roomy per-address bucket and two decimals for PAIR."""
    gw = Gateway(server.url, tmp_path, GATEWAY_CONFIG)
    yield gw
    assert gw.stop() == 0


# -- helpers -------------------------------------------------------------------------------------


def until(probe: Callable[[], T], what: str, timeout: float = 20) -> T:
    """Poll ``probe`` until it returns something true; fail naming ``what`` and its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        time.sleep(0.05)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The console's SEVERE entries since the last call (reading the log empties it)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver: WebDriver, gw: Gateway) -> None:
    # An earlier test's page, its gateway gone, retries its socket until it is unloaded: unload
    # it first, then drop what it logged.
    driver.get("about:blank")
    console_errors(driver)
    driver.get(f"{gw.base}/#{PAIR}")
    until(lambda: conn_state(driver) == "live", "the page's connection state")


def conn_state(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "conn").get_attribute("data-state"))


def ladder(driver: WebDriver) -> dict[str, str]:
    """The ladder's rows as ``book:{P}``'s level fields (``b:<price>`` -> ``<qty>:<orders>``)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#ladder tr.level')].map(r => "
        "[r.dataset.side, r.dataset.price, r.dataset.quantity, r.dataset.orders])"
    )
    return {f"{'b' if s == 'bid' else 'a'}:{p}": f"{q}:{n}" for s, p, q, n in rows}


def engine_levels(r: redis.Redis, keys: Keys) -> dict[str, str]:
    return {k: v for k, v in stored_book(r, keys).items() if k[1] == ":"}


def assert_ladder_is_the_engines(driver: WebDriver, r: redis.Redis, keys: Keys) -> None:
    """The page shows ``book:{P}``: every level and the ``seq``, checked and live."""

    def same() -> bool:
        seq = driver.find_element(By.ID, "ladder").get_attribute("data-seq")
        want = stored_book(r, keys)
        return (
            ladder(driver) == engine_levels(r, keys)
            and seq == want.get("seq")
            and conn_state(driver) == "live"
        )

    until(same, "the ladder equals book:{P}")


def resyncs(driver: WebDriver) -> int:
    """How many snapshots the page had to ask for (a gap or a checksum mismatch) or was told to
    take (a resync): none while the shard and Redis stay up."""
    return int(driver.execute_script("return window.shard.state.resyncs"))


def fill_form(
    driver: WebDriver, side: str, price: str, quantity: str, *, order_type: str = "limit",
    account: str = "",
) -> None:  # fmt: skip
    driver.find_element(By.XPATH, f"//input[@id='side-{side}']/..").click()
    Select(driver.find_element(By.ID, "order-type")).select_by_value(order_type)
    for field, value in (("price", price), ("quantity", quantity), ("account", account)):
        element = driver.find_element(By.ID, field)
        if element.is_enabled():
            element.clear()
            element.send_keys(value)
    driver.find_element(By.ID, "place").click()


def form_text(driver: WebDriver, field: str) -> str:
    return driver.find_element(By.ID, field).text


def rest_order(gw: Gateway, side: str, price: float | int, quantity: int, **more: Any) -> Any:
    body = {"side": side, "price": round(price * SCALE), "quantity": quantity, **more}
    answer = gw.http.post(f"/api/v1/pairs/{PAIR}/orders", json=body)
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


def open_orders(driver: WebDriver) -> dict[str, str]:
    """The open-orders list: order id -> remaining."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#open-orders tr.open-order')].map(r => "
        "[r.dataset.orderId, r.dataset.remaining, r.dataset.status])"
    )
    return {i: left for i, left, status in rows if status == "open"}


# -- the scenarios -------------------------------------------------------------------------------


def test_the_page_loads_with_no_console_errors(browser: WebDriver, gateway: Gateway) -> None:
    open_page(browser, gateway)
    pairs = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "pair")).options]
    assert pairs == [PAIR]
    assert ladder(browser) == {} and browser.find_element(By.ID, "spread").text == "empty book"
    assert gateway.http.get("/").headers["content-type"].startswith("text/html")
    time.sleep(0.5)  # a late error (a failed request, an exception in a handler) shows too
    assert console_errors(browser) == []


def test_prices_are_exact_and_the_checksum_is_the_contracts(
    browser: WebDriver, gateway: Gateway
) -> None:
    """The page's number and CRC-32 code, run in the browser, against Python's."""
    open_page(browser, gateway)
    js, api = "return window.shard.", "window.shard."
    text = "10100000000:5,10000000000:2|10200000000:7"
    assert browser.execute_script(f"{js}crc32({text!r})") == zlib.crc32(text.encode())
    big = 2**62 + 123  # above 2^53: a float would round it
    assert browser.execute_script(
        f"{js}formatPrice({api}parseJSON('{big}'), 2)"
    ) == f"{big // SCALE}.{big % SCALE:08d}".rstrip("0")
    shown = {
        "150000000": "1.50", "123456789": "1.23456789", "100000000000": "1000.00",
        "1": "0.00000001", "0": "0.00",
    }  # fmt: skip
    for value, want in shown.items():
        assert browser.execute_script(f"{js}formatPrice(BigInt({value}), 2)") == want
    parsed = {"1.5": "150000000", "0.00000001": "1", "42": "4200000000", ".5": "50000000"}
    for typed, want in parsed.items():
        assert browser.execute_script(f"return String({api}parsePrice({typed!r}))") == want
    for bad in ("1.123456789", "1,5", "-1", "1e3", "", "92233720368.54775808"):
        assert browser.execute_script(f"return {api}parsePrice({bad!r}) instanceof Error")


def test_an_order_entered_in_the_form_appears_in_the_ladder(
    browser: WebDriver, gateway: Gateway, r: redis.Redis, keys: Keys
) -> None:
    open_page(browser, gateway)
    fill_form(browser, "buy", "1.123456789", "3")
    assert "at most 8" in form_text(browser, "form-error")
    fill_form(browser, "buy", "1.5", "three")
    assert "not a whole number" in form_text(browser, "form-error")
    assert r.xlen(keys.orders) == 0  # refused in the page, nothing published
    fill_form(browser, "buy", "1.5", "3")
    fill_form(browser, "buy", "1.23456789", "2")
    fill_form(browser, "sell", "2", "4")
    until(lambda: r.xlen(keys.events) == 3, "three events")
    assert_ladder_is_the_engines(browser, r, keys)
    assert ladder(browser) == {"b:150000000": "3:1", "b:123456789": "2:1", "a:200000000": "4:1"}
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#ladder tr.level td.price")]
    assert shown == ["2.00", "1.50", "1.23456789"]  # asks above bids, each side best nearest
    cumulative = browser.find_elements(By.CSS_SELECTOR, "#bids tr.level")
    assert [row.get_attribute("data-cumulative") for row in cumulative] == ["3", "5"]
    assert form_text(browser, "form-error") == ""
    assert resyncs(browser) == 0
    assert console_errors(browser) == []


def test_a_crossing_order_trades_into_the_tape_and_the_ticker(
    browser: WebDriver, gateway: Gateway, r: redis.Redis, keys: Keys
) -> None:
    open_page(browser, gateway)
    rest_order(gateway, "sell", 2, 5, order_id="maker", account="mia")
    until(lambda: ladder(browser) == {"a:200000000": "5:1"}, "the resting sell")
    fill_form(browser, "buy", "2.10", "2", account="tom")
    tape = until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#trades tr.trade"), "a trade in the tape"
    )
    assert [(t.get_attribute("data-price"), t.get_attribute("data-quantity")) for t in tape] == [
        ("200000000", "2")
    ]
    assert tape[0].get_attribute("data-taker-side") == "buy" and "2.00" in tape[0].text
    last = browser.find_element(By.ID, "ticker-last")
    until(lambda: last.get_attribute("data-price") == "200000000", "the ticker's last price")
    assert last.text == "2.00"
    until(lambda: browser.find_element(By.ID, "ticker-count").text == "1", "the trade count")
    assert browser.find_element(By.ID, "ticker-volume").text == "2"
    assert_ladder_is_the_engines(browser, r, keys)
    assert ladder(browser) == {"a:200000000": "3:1"}
    assert open_orders(browser) == {}  # the buy filled at once: nothing left open
    candles = browser.find_element(By.ID, "candle-chart")
    until(lambda: candles.get_attribute("data-candles") == "1", "one candle")
    assert resyncs(browser) == 0
    assert console_errors(browser) == []


def test_cancel_from_the_open_orders_list_removes_it(
    browser: WebDriver, gateway: Gateway, r: redis.Redis, keys: Keys
) -> None:
    open_page(browser, gateway)
    fill_form(browser, "sell", "3", "4", account="me")
    mine = until(lambda: open_orders(browser), "the order in the open-orders list")
    ((order_id, left),) = mine.items()
    assert left == "4"
    # Another account takes 1: the page follows its own order's fills from the trades.
    rest_order(gateway, "buy", 3, 1, account="you")
    until(lambda: open_orders(browser) == {order_id: "3"}, "the partly filled order")
    until(lambda: ladder(browser) == {"a:300000000": "3:1"}, "the level after the fill")
    browser.find_element(By.CSS_SELECTOR, f"button.cancel[data-order-id='{order_id}']").click()
    until(lambda: open_orders(browser) == {}, "the open-orders list after cancel")
    until(lambda: ladder(browser) == {}, "the ladder after cancel")
    assert engine_levels(r, keys) == {}
    (_, cancel), *_ = r.xrevrange(keys.orders, count=1)
    assert cancel[b"type"] == b"cancel" and cancel[b"account"] == b"me"
    assert cancel[b"order_id"].decode() == order_id
    assert resyncs(browser) == 0
    assert console_errors(browser) == []


def test_the_open_orders_are_the_servers_also_for_orders_placed_and_cancelled_elsewhere(
    browser: WebDriver, gateway: Gateway, r: redis.Redis, keys: Keys
) -> None:
    """The list is ``GET …/orders`` of the page's account, not what the page placed: an order
    placed by the test through REST (or straight on ``orders:{P}``) appears, another account's
    does not, a fill elsewhere shows, and a cancel through REST takes it off."""
    open_page(browser, gateway)
    field = browser.find_element(By.ID, "account")
    browser.execute_script(
        "arguments[0].value = ''; arguments[0].dispatchEvent(new Event('input'))", field
    )
    until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#open-orders tr.hint"),
        "the hint with neither account nor key",
    )
    field.send_keys("ann")
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#open-orders tr.none"), "an empty list")
    rest_order(gateway, "buy", 4, 6, order_id="rest-1", account="ann")
    rest_order(gateway, "sell", 9, 2, order_id="theirs", account="bob")
    until(lambda: open_orders(browser) == {"rest-1": "6"}, "the REST order in the list", 5)
    publish(r, [{"type": "order", "order_id": "redis-1", "side": "sell", "price": 8 * SCALE,
                 "quantity": 3, "account": "ann"}])  # fmt: skip
    until(
        lambda: open_orders(browser) == {"rest-1": "6", "redis-1": "3"},
        "the order published on orders:{P} in the list", 5,
    )  # fmt: skip
    rest_order(gateway, "sell", 4, 2, account="bob")  # takes 2 of rest-1
    until(
        lambda: open_orders(browser) == {"rest-1": "4", "redis-1": "3"}, "the fill", 5
    )  # fmt: skip
    gone = gateway.http.delete(f"/api/v1/pairs/{PAIR}/orders/rest-1", params={"account": "ann"})
    assert gone.status_code == 200, gone.text
    until(lambda: open_orders(browser) == {"redis-1": "3"}, "the list after a REST cancel", 5)
    gone = gateway.http.delete(f"/api/v1/pairs/{PAIR}/orders", params={"account": "ann"})
    assert gone.status_code == 200, gone.text
    until(lambda: open_orders(browser) == {}, "the list after a REST cancel-all", 5)
    assert ladder(browser) == {"a:900000000": "2:1"}  # bob's order, never listed
    assert resyncs(browser) == 0
    assert console_errors(browser) == []


def test_the_page_follows_the_book_through_a_shard_crash_and_a_redis_restart(
    browser: WebDriver, tmp_path: Path, keys: Keys
) -> None:
    srv = LocalServer(tmp_path / "redis", appendfsync="always").start()
    env = {"SHARD_BLOCK_MS": "50", "SHARD_RECONNECT_MAX_DELAY": "0.5"}
    client = redis.Redis.from_url(srv.url)
    proc = start_daemon(srv.url, env=env)
    gw = Gateway(srv.url, tmp_path, GATEWAY_CONFIG + "wait_ms = 300\n")
    try:
        open_page(browser, gw)
        for n in range(6):
            rest_order(gw, "buy", 100 + n, 1 + n, account="a")
            rest_order(gw, "sell", 110 + n, 2 + n, account="b")
        rest_order(gw, "sell", 104, 3, account="b")  # trades with the best bids
        assert_ladder_is_the_engines(browser, client, keys)

        stop_daemon(proc, signal.SIGKILL)
        for n in range(4):  # published while no shard runs: 202, applied after the restart
            rest_order(gw, "buy", 90 + n, 5, account="a")
        rest_order(gw, "buy", 111, 4, account="a")
        proc = start_daemon(srv.url, env=env)
        wait_events(client, keys, client.xlen(keys.orders))
        assert_ladder_is_the_engines(browser, client, keys)

        srv.stop()
        time.sleep(0.3)
        srv.start()
        client = redis.Redis.from_url(srv.url)

        def placed() -> bool:
            try:
                body = {"side": "sell", "price": 95 * SCALE, "quantity": 7, "account": "b"}
                answer = gw.http.post(f"/api/v1/pairs/{PAIR}/orders", json=body)
            except httpx.TransportError:
                return False
            return answer.status_code in (200, 202)

        until(placed, "an order accepted after the restart", timeout=30)
        wait_events(client, keys, client.xlen(keys.orders), timeout=30)
        assert_ladder_is_the_engines(browser, client, keys)
        assert "b:95" not in "".join(ladder(browser))
        # The gateway's copy resynced after Redis came back (docs/gateway.md): the page took
        # the resync and its snapshot, and is live again on the engine's book.
        assert resyncs(browser) >= 1  # the sell swept the bids down to 95
    finally:
        client.close()
        stop_daemon(proc, signal.SIGKILL)
        gw.stop()
        srv.stop()


def test_a_screenshot_of_a_live_book(
    browser: WebDriver, gateway: Gateway, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    """A book with depth and a few minutes of trades; saved as docs/images/gateway.png when
    SHARD_SCREENSHOT names that file."""
    now = int(time.time() * 1000)
    for n in range(12):
        rest_order(gateway, "buy", 100 - n * 0.25, 3 + (n * 7) % 11, account="a")
        rest_order(gateway, "buy", 100 - n * 0.25, 2, account="c")
        rest_order(gateway, "sell", 100.5 + n * 0.25, 4 + (n * 5) % 9, account="b")
    takers = [("buy", 101), ("sell", 99.5), ("buy", 101.5), ("sell", 99), ("buy", 102)]
    for minute, (side, price) in enumerate([*takers, ("sell", 99.75)]):
        stamp = now - (6 - minute) * 60_000
        rest_order(gateway, side, price, 3, account="t", order_type="ioc", timestamp=stamp)
    rest_order(gateway, "sell", 100.25, 6, account="me")
    open_page(browser, gateway)
    fill_form(browser, "buy", "99.50", "5", account="me")
    until(lambda: open_orders(browser), "the page's own order")
    assert_ladder_is_the_engines(browser, r, keys)
    until(
        lambda: (
            int(browser.find_element(By.ID, "candle-chart").get_attribute("data-candles") or 0) >= 4
        ),
        "the candles",
    )
    shot = tmp_path / "gateway.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("SHARD_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
    assert resyncs(browser) == 0
    assert console_errors(browser) == []


def test_the_page_reconnects_when_the_gateway_comes_back(
    browser: WebDriver, server: LocalServer, daemon: None,  # noqa: F811
    r: redis.Redis, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The socket closes (the gateway stops): the page says so, retries with backoff, and on the
    new gateway at the same address resumes from a snapshot with what it missed."""
    first = Gateway(server.url, tmp_path, GATEWAY_CONFIG)
    try:
        open_page(browser, first)
        rest_order(first, "buy", 7, 2, account="a")
        until(lambda: ladder(browser) == {"b:700000000": "2:1"}, "the first order")
    finally:
        assert first.stop() == 0
    until(lambda: conn_state(browser) == "disconnected", "the state once the gateway is gone")
    publish(r, [{"type": "order", "order_id": "late", "side": "sell", "price": 8 * SCALE,
                 "quantity": 3}])  # fmt: skip
    wait_events(r, keys, 2)
    monkeypatch.setattr(test_gateway, "free_port", lambda: first.port)
    again = Gateway(server.url, tmp_path, GATEWAY_CONFIG)
    try:
        assert again.port == first.port
        assert_ladder_is_the_engines(browser, r, keys)
        assert ladder(browser) == {"b:700000000": "2:1", "a:800000000": "3:1"}
    finally:
        assert again.stop() == 0


def test_with_an_api_key_the_page_trades_as_the_keys_account(
    browser: WebDriver, server: LocalServer, daemon: None,  # noqa: F811
    r: redis.Redis, keys: Keys, tmp_path: Path,
) -> None:  # fmt: skip
    """The key goes in ``Authorization: Bearer`` (kept in sessionStorage), the gateway stamps
    its account; the cancel button sends it too."""
    key = "page-key-0123456789"
    entry = f'[[gateway.keys]]\nsha256 = "{hash_key(key)}"\naccount = "kim"\n'
    gw = Gateway(server.url, tmp_path, GATEWAY_CONFIG + entry)
    try:
        open_page(browser, gw)
        browser.find_element(By.CSS_SELECTOR, "#order-form details summary").click()
        browser.find_element(By.ID, "api-key").send_keys(key)
        fill_form(browser, "buy", "5", "2")
        ((order_id, _),) = until(lambda: open_orders(browser), "the keyed order").items()
        (_, placed), *_ = r.xrevrange(keys.orders, count=1)
        assert placed[b"account"] == b"kim" and placed[b"order_id"].decode() == order_id
        stored = browser.execute_script("return sessionStorage.getItem('shard.apiKey')")
        assert stored == key
        browser.find_element(By.CSS_SELECTOR, f"button.cancel[data-order-id='{order_id}']").click()
        until(lambda: open_orders(browser) == {}, "the open-orders list after cancel")
        until(lambda: ladder(browser) == {}, "the ladder after cancel")
        assert console_errors(browser) == []
    finally:
        browser.execute_script("sessionStorage.clear()")
        assert gw.stop() == 0
