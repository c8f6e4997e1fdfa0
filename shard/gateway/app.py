"""The gateway's ASGI app: REST routes, the WebSocket feed and the page (docs/gateway.md).

Order entry publishes to ``orders:{P}`` and answers with the input's event, read by the pair's
:class:`~shard.gateway.feed.PairFeed`; everything else is served from the feeds' memory, so a
request costs no Redis round trip but the XADD. Errors are JSON ``{"error", "detail"}``.
On a Redis Cluster each pair's commands go to its slot's master (:mod:`shard.gateway.route`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from shard.config import Config, Keys
from shard.gateway.candles import INTERVALS, candles
from shard.gateway.config import GatewayConfig
from shard.gateway.feed import Outcome, PairFeed, levels, pack, round_trip, ws_text
from shard.gateway.limits import KeyRing, RateLimiter
from shard.gateway.replica import LiveOrder, Replica
from shard.gateway.route import PairRoute, is_cluster
from shard.messages import REJECTED
from shard.store import Store
from shard.transport import RETRIED, connect, describe, plain_async_client, text

STATIC: Final = Path(__file__).parent / "static"
log = logging.getLogger("shard.gateway")
_json = msgspec.json.Encoder()


class ApiError(Exception):
    """An answer other than success: its HTTP status, code and sentence."""

    def __init__(self, status: int, code: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


class _Kicked(Exception):
    """A WebSocket client was closed for falling behind."""


def _limited(what: str, wait: float) -> ApiError:
    """429, with the whole seconds until a token is there in Retry-After."""
    return ApiError(
        429,
        "rate_limited",
        f"{what}; retry in {wait:.2f} s",
        **{"Retry-After": str(math.ceil(wait))},
    )


def _answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status, headers, media_type="application/json")


class OrderBody(msgspec.Struct, forbid_unknown_fields=True):
    side: str
    quantity: int
    price: int | None = None
    order_type: str | None = None
    order_id: str | None = None
    timestamp: int | None = None
    stp: str | None = None
    account: str | None = None
    type: str | None = None


class AmendBody(msgspec.Struct, forbid_unknown_fields=True):
    price: int | None = None
    quantity: int | None = None
    timestamp: int | None = None
    account: str | None = None


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "HTTP requests by route and status.", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.entry_seconds = Histogram(
            "gateway_order_entry_seconds", "Order entry, request to the input's event.",
            ["pair"], registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )  # fmt: skip
        self.clients = Gauge("gateway_ws_clients", "WebSocket clients.", ["pair"], registry=r)
        self.sent = Counter(
            "gateway_ws_messages", "WebSocket messages sent, by type.", ["pair", "type"],
            registry=r,
        )  # fmt: skip
        self.conflated = Counter(
            "gateway_ws_conflated", "Book updates merged into a later one for a client that was "
            "still sending.", ["pair"], registry=r,
        )  # fmt: skip
        self.slow = Counter(
            "gateway_ws_slow_closes", "Clients closed for falling behind on trades.", ["pair"],
            registry=r,
        )  # fmt: skip
        self.resyncs = Gauge("gateway_book_resyncs", "Book resyncs so far.", ["pair"], registry=r)


class Gateway:
    """The app's state: the Redis client, one feed per pair, the key ring and the limiters."""

    def __init__(self, config: GatewayConfig, connection: Config) -> None:
        self.config = config
        self.connection = connection
        self.client: Redis = plain_async_client(connection, client_name="shard-gateway")
        self.reader: Redis = connect(connection)  # raw XRANGE replies, as recovery's
        self.feeds = {
            pair: PairFeed(
                self.client, self.reader, pair, connection.key_prefix, config.trades_kept,
                Replica(
                    Store(self.reader, Keys(pair, connection.key_prefix), connection.group),
                    msgspec.structs.replace(connection, pair=pair),
                ),
                config.ws_interval_ms / 1000,
            )
            for pair in config.pairs
        }  # fmt: skip
        self.keys = KeyRing.from_entries([msgspec.to_builtins(k) for k in config.keys])
        self.per_key = RateLimiter(config.rate_per_key, config.burst_per_key)
        self.per_address = RateLimiter(config.rate_per_address, config.burst_per_address)
        self.metrics = GatewayMetrics()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: dict[int, list[tuple[bytes, asyncio.Future[str]]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()
        self.routes: list[PairRoute] = []
        """On a Redis Cluster: each pair's route to its slot's owner (empty on one server)."""

    def _spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, held until done (a flush, a route's repair)."""

        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def xadd(self, client: Redis, key: str, fields: dict[str, str]) -> str:
        """XADD ``fields`` to ``key`` through ``client`` (its pair's); the entry ID. The XADDs
        of requests that arrive together for one client (one server: every pair's) go in one
        write (one round trip): on this kind of machine a socket write costs about 0.2 ms,
        more than the rest of a request. Each is packed here, by hiredis."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        flat = (x for field in fields.items() for x in field)
        batch = self._outbox.setdefault(id(client), [])
        batch.append((pack("XADD", key, "*", *flat), future))
        if len(batch) == 1:
            self._spawn(self._flush(client))
        return await future

    async def _flush(self, client: Redis) -> None:
        await asyncio.sleep(0)  # the requests already parsed in this turn of the loop join
        batch = self._outbox.pop(id(client), [])
        try:
            replies = await round_trip(client, [packed for packed, _ in batch])
        except RETRIED as exc:
            replies = [exc] * len(batch)
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(text(reply) or "")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._tasks = [asyncio.create_task(self._start())]
        try:
            yield
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for route in self.routes:
                await route.aclose()
            await self.client.aclose()
            await self.reader.aclose()

    async def _start(self) -> None:
        """Ask once whether the URL names a cluster node (waiting out a server that does not
        answer yet), route every pair to its slot's owner if so, then start the feeds."""
        if await self._cluster_mode():
            await self._route_pairs()
        self._tasks += [asyncio.create_task(feed.run()) for feed in self.feeds.values()]

    async def _cluster_mode(self) -> bool:
        backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        failures = 0
        while True:
            try:
                return await is_cluster(self.connection, self.client)
            except ResponseError as exc:  # INFO refused (an ACL): served as one server
                log.warning("cluster mode not asked (%s): one server", describe(exc))
                return False
            except RETRIED as exc:
                failures += 1
                log.warning("cluster mode not known yet: %s; asking again", describe(exc))
                await asyncio.sleep(backoff.compute(failures))

    async def _route_pairs(self) -> None:
        """On a cluster: a route per pair, its own clients on its slot's owner, found again
        after any error. O(pairs) CLUSTER SLOTS."""
        for feed in self.feeds.values():
            route = PairRoute(feed, self.connection)
            feed.repair = route.repair
            self.routes.append(route)
            await route.repair()
        log.info("redis cluster: each pair routed to its slot's owner (%d)", len(self.routes))

    # -- request helpers -----------------------------------------------------------------------

    def feed(self, request: Request | WebSocket) -> PairFeed:
        pair = request.path_params["pair"]
        feed = self.feeds.get(pair)
        if feed is None:
            raise ApiError(404, "unknown_pair", f"pair {pair!r} is not served here")
        return feed

    def limit(self, request: Request) -> None:
        address = request.client.host if request.client else "?"
        wait = self.per_address.take(address, time.monotonic())
        if wait:
            raise _limited(f"too many requests from {address}", wait)

    def account(self, request: Request, named: str | None, entry: bool = True) -> str | None:
        """The caller's account: the key's (needed when keys are configured), else what the
        request names. ``entry``: order entry, which the key's token bucket limits."""
        if not self.keys:
            return named
        account = self.keys.account_of(request.headers.get("authorization"))
        if account is None:
            raise ApiError(
                401, "unauthorized", "a valid API key is needed: Authorization: Bearer <key>"
            )
        if named is not None and named != account:
            raise ApiError(
                403, "account_mismatch", f"the key trades as its own account, not {named!r}"
            )
        wait = self.per_key.take(account, time.monotonic()) if entry else 0.0
        if wait:
            raise _limited("too many orders for this key", wait)
        return account

    async def body(self, request: Request, kind: type[Any]) -> Any:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, "body_too_large", f"the body is {length} bytes; at most {limit}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise ApiError(413, "body_too_large", f"the body is over {limit} bytes")
        try:
            return msgspec.json.decode(bytes(data) or b"{}", type=kind)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "bad_request", f"the body is not a valid request: {exc}") from None

    async def publish(self, feed: PairFeed, fields: dict[str, str]) -> Response:
        """XADD ``fields`` and answer with the input's outcome (or 202 after ``wait_ms``)."""
        started = time.perf_counter()
        try:
            input_id = await self.xadd(feed.client, feed.keys.orders, fields)
        except (*RETRIED, ResponseError) as exc:
            if feed.repair is not None:  # on a cluster: find the slot's owner again now
                self._spawn(feed.repair(exc))
            raise ApiError(503, "unavailable", f"Redis: {describe(exc)}") from None
        outcome = await feed.outcome(input_id, self.config.wait_ms / 1000)
        if outcome is None:
            return _answer({"input_id": input_id}, 202)
        self.metrics.entry_seconds.labels(feed.pair).observe(time.perf_counter() - started)
        return outcome_response(outcome)


def outcome_response(outcome: Outcome) -> Response:
    body: dict[str, Any] = {
        "input_id": outcome.input_id, "event": outcome.event, "trades": outcome.trades,
    }  # fmt: skip
    if outcome.order_events:
        body["order_events"] = outcome.order_events
    event = outcome.event
    if event.status != REJECTED:
        return _answer(body)
    status = 404 if event.reason == "unknown_order" else 422
    return _answer({"error": event.reason, "detail": event.detail, **body}, status)


Handler = Callable[[Gateway, Request], Awaitable[Response]]


def _route(
    gateway: Gateway, name: str, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if name not in ("health", "metrics"):
                gateway.limit(request)
            response = await handler(gateway, request)
        except ApiError as exc:
            response = _answer({"error": exc.code, "detail": exc.detail}, exc.status, exc.headers)
        gateway.metrics.requests.labels(name, str(response.status_code)).inc()
        return response

    return endpoint


def _int_param(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError(400, "bad_request", f"{name} = {raw!r}: an integer from 1 to {most}")
    return int(raw)


def _best(level: Any) -> list[int] | None:
    return None if level is None else list(level)


# -- routes ------------------------------------------------------------------------------------


async def pairs(gateway: Gateway, request: Request) -> Response:
    return _answer(
        [
            {
                "pair": pair,
                "best_bid": _best(feed.view.best_bid),
                "best_ask": _best(feed.view.best_ask),
                "ticker": feed.ticker,
                "decimals": gateway.config.decimals.get(pair, 8),
            }
            for pair, feed in gateway.feeds.items()
        ]
    )


async def book(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    depth = _int_param(request, "depth", 50, 1000)
    view = feed.view
    if not view.synced:
        raise ApiError(503, "unavailable", f"the book of {feed.pair} is resyncing: {view.problem}")
    return _answer(
        {
            "pair": feed.pair, "seq": view.seq, "input_id": view.input_id,
            "bids": levels(view.bids(depth)), "asks": levels(view.asks(depth)),
            "checksum": view.book.checksum(),
        }
    )  # fmt: skip


async def trades(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    return _answer(feed.latest_trades(_int_param(request, "limit", 100, 1000)))


async def ticker(gateway: Gateway, request: Request) -> Response:
    return _answer(gateway.feed(request).ticker)


async def candle_route(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    interval = request.query_params.get("interval", "1m")
    if interval not in INTERVALS:
        raise ApiError(
            400, "bad_request", f"interval = {interval!r}: one of {', '.join(INTERVALS)}"
        )
    limit = _int_param(request, "limit", 100, 1000)
    rows = ((t.timestamp, t.price, t.quantity) for t in feed.trades)
    return _answer(candles(rows, INTERVALS[interval], limit))


async def place(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    body: OrderBody = await gateway.body(request, OrderBody)
    if body.type not in (None, "order"):
        raise ApiError(400, "bad_request", f"type = {body.type!r}: this route places orders")
    account = gateway.account(request, body.account)
    fields = {"type": "order", "order_id": body.order_id or secrets.token_hex(8)}
    fields["side"], fields["quantity"] = body.side, str(body.quantity)
    optional = {
        "order_type": body.order_type, "price": body.price, "timestamp": body.timestamp,
        "stp": body.stp, "account": account,
    }  # fmt: skip
    fields.update({k: str(v) for k, v in optional.items() if v is not None})
    return await gateway.publish(feed, fields)


async def cancel(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    account = gateway.account(request, request.query_params.get("account"))
    fields = {"type": "cancel", "order_id": request.path_params["order_id"]}
    if account is not None:
        fields["account"] = account
    return await gateway.publish(feed, fields)


async def amend(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    body: AmendBody = await gateway.body(request, AmendBody)
    account = gateway.account(request, body.account)
    fields = {"type": "amend", "order_id": request.path_params["order_id"]}
    optional = {"price": body.price, "quantity": body.quantity, "timestamp": body.timestamp}
    fields.update({k: str(v) for k, v in optional.items() if v is not None})
    if account is not None:
        fields["account"] = account
    return await gateway.publish(feed, fields)


async def cancel_all(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    account = gateway.account(request, request.query_params.get("account"))
    if account is None:
        raise ApiError(400, "bad_request", "cancel all needs an account (a key, or ?account=)")
    fields = {"type": "cancel_all", "account": account}
    side = request.query_params.get("side")
    if side is not None:
        fields["side"] = side
    return await gateway.publish(feed, fields)


def _replica(feed: PairFeed) -> Replica:
    replica = feed.replica
    if replica is None or replica.engine is None:
        raise ApiError(503, "unavailable", f"the orders of {feed.pair} are being rebuilt")
    return replica


def _live(order: LiveOrder) -> dict[str, Any]:
    out: dict[str, Any] = {
        "order_id": order.order_id, "status": "live", "side": order.side,
        "price": order.price, "remaining_quantity": order.remaining,
    }  # fmt: skip
    if order.account is not None:
        out["account"] = order.account
    return out


async def order_state(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    order_id = request.path_params["order_id"]
    account = gateway.account(request, request.query_params.get("account"), entry=False)
    replica = _replica(feed)
    unknown = ApiError(
        404, "unknown_order",
        f"order_id {order_id!r} is not live, and did not finish since this gateway started",
    )  # fmt: skip
    live = replica.live(order_id)
    if live is not None:
        if account is not None and live.account != account:
            raise unknown  # another account's order is not revealed
        return _answer(_live(live))
    finished = replica.finished.get(order_id)
    if finished is None or (account is not None and finished.get("account") != account):
        raise unknown
    return _answer({"order_id": order_id, **finished})


async def open_orders(gateway: Gateway, request: Request) -> Response:
    feed = gateway.feed(request)
    account = gateway.account(request, request.query_params.get("account"), entry=False)
    if account is None:
        raise ApiError(400, "bad_request", "open orders need an account (a key, or ?account=)")
    return _answer([_live(order) for order in _replica(feed).open_orders(account)])


async def health(gateway: Gateway, request: Request) -> Response:
    try:
        # Each pair's client: on one server the one client; on a cluster each pair's master's.
        clients = {id(f.client): f.client for f in gateway.feeds.values()}.values()
        await asyncio.gather(*(client.ping() for client in clients))
        redis_ok, problem = True, None
    except RETRIED as exc:
        redis_ok, problem = False, describe(exc)
    report = {
        pair: {
            "synced": feed.view.synced, "seq": feed.view.seq,
            "resyncs": sum(feed.view.resyncs.values()), "problem": feed.view.problem,
            "outputs": feed.outputs_ok,
            "orders": feed.replica is None or feed.replica.engine is not None,
        }
        for pair, feed in gateway.feeds.items()
    }  # fmt: skip
    ok = redis_ok and all(p["synced"] and p["outputs"] and p["orders"] for p in report.values())
    body = {"status": "ok" if ok else "degraded", "redis": problem or "ok", "pairs": report}
    return _answer(body, 200 if ok else 503)


async def metrics(gateway: Gateway, request: Request) -> Response:
    for pair, feed in gateway.feeds.items():
        gateway.metrics.resyncs.labels(pair).set(sum(feed.view.resyncs.values()))
        gateway.metrics.clients.labels(pair).set(len(feed.subscribers))
    return Response(generate_latest(gateway.metrics.registry), media_type="text/plain")


async def page(gateway: Gateway, request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


# -- the WebSocket feed ----------------------------------------------------------------------


async def stream(gateway: Gateway, websocket: WebSocket) -> None:
    try:
        feed = gateway.feed(websocket)
    except ApiError as exc:
        await websocket.close(code=1008, reason=exc.detail[:120])
        return
    await websocket.accept()
    sub = feed.subscribe(gateway.config.ws_queue)
    sent = gateway.metrics.sent

    async def receive() -> None:
        while True:
            message = await websocket.receive_text()
            with contextlib.suppress(msgspec.DecodeError):
                if msgspec.json.decode(message).get("op") == "snapshot":
                    sub.snapshot = True
                    sub.wake.set()

    counted: dict[str, Any] = {}  # a metric's child per kind: labels() costs a lookup

    async def send_text(kind: str, message: str) -> None:
        await websocket.send_text(message)
        child = counted.get(kind)
        if child is None:
            child = counted[kind] = sent.labels(feed.pair, kind)
        child.inc()

    async def send(kind: str, message: Any) -> None:
        await send_text(kind, ws_text(message))

    async def kick() -> None:
        """Close a client that fell behind on trades, even while a send to it blocks: the close
        frame goes behind what is buffered, and the connection ends after 2 s at most."""
        await sub.kicked.wait()
        gateway.metrics.slow.labels(feed.pair).inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(websocket.close(code=1013, reason="fell behind on trades"), 2)
        raise _Kicked

    async def deliver() -> None:
        while True:
            await sub.wake.wait()
            sub.wake.clear()
            if sub.overflowed:
                await asyncio.Event().wait()  # kick() closes the connection
            if sub.snapshot:
                if not feed.view.synced:
                    continue  # the sync's update wakes us again
                if sub.resync:
                    await send("resync", {"type": "resync", "reason": sub.resync})
                await send("snapshot", feed.snapshot(sub))
                continue
            depth = sub.take_depth()
            if sub.conflated:
                gateway.metrics.conflated.labels(feed.pair).inc(sub.conflated)
                sub.conflated = 0
            if depth is not None:
                await send_text("depth", depth)
            while sub.trades:
                await send_text("trades", sub.take_trades())
            if sub.ticker is not None:
                ticker, sub.ticker = sub.ticker, None
                await send_text("ticker", ticker)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(receive())
            tasks.create_task(deliver())
            tasks.create_task(kick())
    except* (WebSocketDisconnect, RuntimeError, _Kicked):
        pass
    finally:
        feed.unsubscribe(sub)


def create_app(config: GatewayConfig, connection: Config) -> Starlette:
    """The gateway as an ASGI app; its feeds start and stop with the app's lifespan."""
    gateway = Gateway(config, connection)

    def route(path: str, name: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _route(gateway, name, handler), methods=methods)

    pair = "/api/v1/pairs/{pair}"
    routes = [
        route("/", "page", page, ["GET"]),
        route("/health", "health", health, ["GET"]),
        route("/metrics", "metrics", metrics, ["GET"]),
        route("/api/v1/pairs", "pairs", pairs, ["GET"]),
        route(f"{pair}/book", "book", book, ["GET"]),
        route(f"{pair}/trades", "trades", trades, ["GET"]),
        route(f"{pair}/ticker", "ticker", ticker, ["GET"]),
        route(f"{pair}/candles", "candles", candle_route, ["GET"]),
        route(f"{pair}/orders", "place", place, ["POST"]),
        route(f"{pair}/orders", "cancel_all", cancel_all, ["DELETE"]),
        route(f"{pair}/orders/{{order_id}}", "cancel", cancel, ["DELETE"]),
        route(f"{pair}/orders/{{order_id}}", "amend", amend, ["PATCH"]),
        route(f"{pair}/orders/{{order_id}}", "order", order_state, ["GET"]),
        route(f"{pair}/orders", "open_orders", open_orders, ["GET"]),
        WebSocketRoute(f"{pair}/ws", lambda ws: stream(gateway, ws)),
    ]
    app = Starlette(routes=routes, lifespan=gateway.lifespan)
    app.state.gateway = gateway
    return app
