"""Bitcoin Core nodes as a TemplateSource: long poll, ZMQ or polling, refresh, failover with backoff.

Per node, two loops look for work:
- a long poll: `getblocktemplate` with the node's last `longpollid`; Core answers when its tip changes
  (or its mempool changed, after a minute);
- a tip watch: ZMQ `hashblock` when configured and pyzmq is installed (then `getbestblockhash` only every
  `health_interval_s` as a health check), else `getbestblockhash` every `poll_interval_s`; a hash that
  differs from the node's last template fetches a template at once.
One refresh timer fetches a fresh template from the active node `refresh_s` after the last one yielded.

What is yielded: the source remembers the template it last yielded. A template at a greater height is a
new tip, yielded at once from whichever node has it; the same tip again is a refresh, yielded only when
`refresh_s` has passed; anything else (lower height, or the same height on another branch) comes from a
node on a stale tip and is dropped. So a node that lags or restarts empty is never used for jobs, and
when every node is down nothing new is yielded: miners stay on the last valid job. Height stands in for
chain work (forks within one retarget window have equal work per block); at start-up the first template
of every node is compared before the first yield.

Health: a failed call puts the node in exponential backoff (`backoff_initial_s` doubling up to
`backoff_max_s`); all of its loops wait it out; the first success marks it up again. A node going down is
logged at once and then at most once per `log_interval_s`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from hashlib import sha256
from typing import AsyncIterator, Awaitable, Sequence

from .node_health import Backoff, NodeHealth
from .node_rpc import RpcStats, NodeError, NodeUnreachable, RpcClient, RpcError, RpcTimeout
from .template import BlockTemplate, SubmitOutcome, TemplateError
from .zmq_listener import watch_hashblock, zmq_available

log = logging.getLogger("kzpool.bitcoind")

PARSE_IN_THREAD_TXS = 200      # from_rpc over thousands of transactions takes tens of ms: not on the loop
RPC_BLOCK_NOT_FOUND = -5       # Core's RPC_INVALID_ADDRESS_OR_KEY: "Block not found"
RPC_INVALID_PARAMETER = -8     # Core's answer to getblockhash beyond the tip: "Block height out of range"


@dataclass
class _Node:
    rpc: RpcClient
    health: NodeHealth
    zmq_endpoint: str | None
    longpollid: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    zmq_tip: str = ""            # a hash ZMQ announced and no template has caught up with yet
    logged_at_s: float = -math.inf


class BitcoindSource:
    name = "bitcoind"

    def __init__(self, rpc_urls: Sequence[str], *, cookie_file: str | Sequence[str | None] | None = None,
                 user: str | None = None, password: str | None = None,
                 zmq_hashblock: str | Sequence[str | None] | None = None, poll_interval_s: float = 0.2,
                 refresh_s: float = 30.0, timeout_s: float = 10.0, longpoll_timeout_s: float = 120.0,
                 health_interval_s: float = 5.0, submit_timeout_s: float = 60.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 log_interval_s: float = 60.0) -> None:
        if not rpc_urls:
            raise ValueError("node.rpc_urls: at least one Bitcoin Core RPC url is needed")
        cookies = _per_node(cookie_file, len(rpc_urls), "cookie_file")
        endpoints = _per_node(zmq_hashblock, len(rpc_urls), "zmq_hashblock")
        self._use_zmq = any(endpoints) and zmq_available()
        if any(endpoints) and not self._use_zmq:
            log.warning("zmq_unavailable reason=pyzmq_not_installed fallback=poll poll_interval_s=%g",
                        poll_interval_s)
        self._nodes = [_Node(RpcClient(url, cookie_file=cookie, user=user, password=password,
                                       timeout_s=timeout_s), NodeHealth(""), endpoint)
                       for url, cookie, endpoint in zip(rpc_urls, cookies, endpoints)]
        for node in self._nodes:
            node.health.name = node.rpc.name
        self.poll_interval_s, self.refresh_s = poll_interval_s, refresh_s
        self.longpoll_timeout_s, self.health_interval_s = longpoll_timeout_s, health_interval_s
        self.submit_timeout_s = submit_timeout_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s)
        self.log_interval_s = log_interval_s
        self._current: BlockTemplate | None = None
        self._active: _Node | None = None
        self._yielded_at_s = 0.0
        self._version = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self._closed = False
        log.info("bitcoind_source nodes=%s zmq=%s poll_interval_s=%g refresh_s=%g timeout_s=%g "
                 "longpoll_timeout_s=%g backoff_max_s=%g", ",".join(n.health.name for n in self._nodes),
                 self._use_zmq, poll_interval_s, refresh_s, timeout_s, longpoll_timeout_s, backoff_max_s)

    def rpc_stats(self) -> list[tuple[str, "RpcStats"]]:
        """Each node's RPC call statistics (latencies and errors), for the metrics."""
        return [(node.rpc.name, node.rpc.stats) for node in self._nodes]

    def health(self) -> list[NodeHealth]:
        return [dataclasses.replace(node.health) for node in self._nodes]

    async def templates(self) -> AsyncIterator[BlockTemplate]:
        if not self._started and not self._closed:
            self._started = True          # the first consumer starts the loops; later ones share them
            self._spawn(self._run())
        seen = 0
        while not self._closed:
            if self._version == seen:
                await self._changed.wait()
                continue
            seen = self._version
            assert self._current is not None
            yield self._current

    async def submit_block(self, block: bytes) -> list[SubmitOutcome]:
        block_hash = sha256(sha256(block[:80]).digest()).digest()[::-1].hex()
        data = block.hex()
        # The full hex is logged: if every node refuses or is down, an operator can still submit it by hand.
        log.info("block_submit hash=%s bytes=%d hex=%s", block_hash, len(block), data)
        outcomes = await asyncio.gather(*(self._submit_one(n, data, block_hash) for n in self._nodes))
        for node in self._nodes:
            node.wake.set()     # fetch the new tip now rather than at the next poll
        self._spawn(self._log_status(block_hash))     # a hung node must not delay the outcomes
        return list(outcomes)

    async def _log_status(self, block_hash: str) -> None:
        log.info("block_status hash=%s status=%s", block_hash, await self.block_status(block_hash))

    async def block_status(self, block_hash_display: str) -> str:
        """"active" (in the main chain of the best node that knows it), "orphan", or "unknown"."""
        async def confirmations(node: _Node) -> int | None:
            try:
                return await self._confirmations_on(node, block_hash_display)
            except NodeError:
                return None      # -5 "Block not found", or the node is down

        answers = await asyncio.gather(*(confirmations(n) for n in self._nodes))
        # The node with the best tip decides: one that lags may not have seen the competing block yet.
        for node, confs in sorted(zip(self._nodes, answers), key=lambda p: -p[0].health.height):
            if isinstance(confs, int):
                return "active" if confs >= 0 else "orphan"
        return "unknown"

    async def confirmations(self, block_hash_display: str) -> int | None:
        """getblockheader's `confirmations` from the node with the best tip that answers: >= 1 in
        the best chain, -1 off it, None when that node says the block does not exist (-5). Raises
        NodeUnreachable when no node answers: "unknown" must never read as "orphaned"."""
        async def ask(node: _Node) -> int | None | NodeError:
            try:
                return await self._confirmations_on(node, block_hash_display)
            except RpcError as exc:
                return None if exc.code == RPC_BLOCK_NOT_FOUND else exc
            except NodeError as exc:
                return exc

        answers = await asyncio.gather(*(ask(n) for n in self._nodes))
        for node, answer in sorted(zip(self._nodes, answers), key=lambda p: -p[0].health.height):
            if not isinstance(answer, NodeError):
                return answer
        raise NodeUnreachable(f"no node answered getblockheader {block_hash_display}: "
                              + "; ".join(str(a) for a in answers))

    async def _confirmations_on(self, node: _Node, block_hash_display: str) -> int:
        """One node's `confirmations` for a block, -1 when it is not in that node's main chain.

        A positive count is checked with `getblockhash <height>`: Core answers -1 for a block off its
        main chain, but bcoin 1.0.2 counts confirmations from the block's height even for a block a
        reorg left behind, which would let an orphan mature. Raises NodeError (RpcError -5 when the
        node does not know the block)."""
        header = await node.rpc.call("getblockheader", block_hash_display, True)
        confs = header.get("confirmations") if isinstance(header, dict) else None
        if not isinstance(confs, int) or isinstance(confs, bool):
            raise NodeUnreachable(f"{node.health.name}: getblockheader without an integer confirmations field")
        if confs < 1:
            return confs
        height = header.get("height")
        if not isinstance(height, int) or isinstance(height, bool):
            raise NodeUnreachable(f"{node.health.name}: getblockheader without an integer height field")
        try:
            at_height = await node.rpc.call("getblockhash", height)
        except RpcError as exc:
            if exc.code != RPC_INVALID_PARAMETER:
                raise
            return -1       # "Block height out of range": the main chain no longer reaches the block
        return confs if isinstance(at_height, str) and at_height.lower() == block_hash_display.lower() else -1

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for node in self._nodes:
            await node.rpc.close()
        self._changed.set()

    # Loops ---------------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        async def first(node: _Node) -> BlockTemplate | None:
            try:
                return await self._fetch(node)
            except Exception as exc:
                self._failed(node, exc)
                return None

        firsts = await asyncio.gather(*(first(n) for n in self._nodes))
        ranked = sorted(((t, n) for t, n in zip(firsts, self._nodes) if t), key=lambda p: -p[0].height)
        for tpl, node in ranked:      # best first; the rest are refreshes (ignored) or stale
            self._consider(node, tpl)
        for node in self._nodes:
            self._spawn(self._longpoll_loop(node))
            self._spawn(self._tip_loop(node))
            if self._use_zmq and node.zmq_endpoint:
                self._spawn(self._zmq_loop(node))
        self._spawn(self._refresh_loop())

    async def _longpoll_loop(self, node: _Node) -> None:
        while True:
            await self._backoff(node)
            sent = node.longpollid
            try:
                tpl = await self._fetch(node, longpoll=True)
            except RpcTimeout as exc:
                if sent is None:
                    self._failed(node, exc)
                continue      # a quiet node: Core had nothing new within longpoll_timeout_s
            except Exception as exc:
                self._failed(node, exc)
                continue
            self._consider(node, tpl)
            if tpl.longpollid == sent:
                await asyncio.sleep(self.poll_interval_s)   # a node that ignores longpollid must not spin us

    async def _tip_loop(self, node: _Node) -> None:
        while True:
            interval = self.health_interval_s if self._use_zmq and node.zmq_endpoint else self.poll_interval_s
            try:
                # Not asyncio.wait_for: on 3.11 it can swallow a cancel that races a set wake event.
                async with asyncio.timeout(interval):
                    await node.wake.wait()
            except TimeoutError:
                pass
            node.wake.clear()
            hint, node.zmq_tip = node.zmq_tip, ""
            await self._backoff(node)
            try:
                # A ZMQ hint already names the new tip: skip the getbestblockhash round trip.
                best = hint or await node.rpc.call("getbestblockhash")
                self._ok(node)
                if best != node.health.prev_hash:
                    self._consider(node, await self._fetch(node))
            except Exception as exc:
                self._failed(node, exc)

    async def _zmq_loop(self, node: _Node) -> None:
        def on_block(block_hash: str, _seq: int) -> None:
            if block_hash != node.health.prev_hash:
                node.zmq_tip = block_hash
                node.wake.set()
        try:
            await watch_hashblock(node.zmq_endpoint or "", on_block)
        except Exception as exc:
            log.warning("zmq_failed node=%s error=%s fallback=poll", node.health.name, exc)
            node.zmq_endpoint = None       # the tip loop goes back to poll_interval_s

    async def _refresh_loop(self) -> None:
        while True:
            wait = self._yielded_at_s + self.refresh_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            node = self._refresh_node()
            if node is None:
                await asyncio.sleep(self.poll_interval_s)     # nobody healthy at the tip in use, yet
                continue
            try:
                self._consider(node, await self._fetch(node))
            except Exception as exc:
                self._failed(node, exc)

    # Decisions -----------------------------------------------------------------------------------
    async def _fetch(self, node: _Node, longpoll: bool = False) -> BlockTemplate:
        request: dict = {"rules": ["segwit"]}
        timeout = None
        if longpoll and node.longpollid is not None:
            request["longpollid"] = node.longpollid
            timeout = self.longpoll_timeout_s
        raw = await node.rpc.call("getblocktemplate", request, timeout_s=timeout)
        self._ok(node)
        if not isinstance(raw, dict):
            raise TemplateError("getblocktemplate result is not an object")
        raw = without_commitment_before_segwit(raw)
        if len(raw.get("transactions") or ()) > PARSE_IN_THREAD_TXS:
            tpl = await asyncio.to_thread(BlockTemplate.from_rpc, raw, node.health.name)
        else:
            tpl = BlockTemplate.from_rpc(raw, node.health.name)
        health = node.health
        health.height, health.prev_hash, health.templates = tpl.height, tpl.prev_hash_display, health.templates + 1
        node.longpollid = tpl.longpollid
        return tpl

    def _consider(self, node: _Node, tpl: BlockTemplate) -> None:
        current = self._current
        if current is None or tpl.height > current.height:
            reason = "new_tip"
        elif tpl.height == current.height and tpl.prev_hash == current.prev_hash:
            node.health.stale = False
            if time.monotonic() - self._yielded_at_s < self.refresh_s:
                return
            reason = "refresh"
        else:
            if not node.health.stale:
                log.warning("node_stale_tip node=%s height=%d prev=%s in_use_height=%d in_use_prev=%s",
                            node.health.name, tpl.height, tpl.prev_hash_display, current.height,
                            current.prev_hash_display)
            node.health.stale = True
            return
        node.health.stale = False
        self._current, self._active = tpl, node
        self._yielded_at_s = time.monotonic()
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        log.info("template reason=%s node=%s height=%d prev=%s txs=%d coinbasevalue=%d", reason,
                 node.health.name, tpl.height, tpl.prev_hash_display, len(tpl.transactions), tpl.coinbasevalue)

    def _refresh_node(self) -> _Node | None:
        if self._current is None:
            return None
        now = time.monotonic()
        candidates = [n for n in self._nodes
                      if n.health.usable(now) and n.health.prev_hash == self._current.prev_hash_display]
        return self._active if self._active in candidates else (candidates[0] if candidates else None)

    async def _submit_one(self, node: _Node, data: str, block_hash: str) -> SubmitOutcome:
        try:
            result = await node.rpc.call("submitblock", data, timeout_s=self.submit_timeout_s)
            outcome = SubmitOutcome(node.health.name, None if result is None else str(result))
        except NodeError as exc:
            message = getattr(exc, "message", None)     # RpcError: Core refused it (e.g. decode failed)
            outcome = SubmitOutcome(node.health.name, message, None if message else str(exc))
        level = logging.INFO if outcome.accepted else logging.WARNING
        verdict = "accepted" if outcome.accepted else outcome.result or "unreachable"
        log.log(level, "block_submitted node=%s hash=%s result=%s error=%s", node.health.name, block_hash,
                verdict, outcome.error or "")
        return outcome

    # Health --------------------------------------------------------------------------------------
    async def _backoff(self, node: _Node) -> None:
        delay = node.health.retry_at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _ok(self, node: _Node) -> None:
        down_s = node.health.record_ok(time.monotonic())
        if down_s is not None:
            log.info("node_up node=%s down_s=%.1f", node.health.name, down_s)

    def _failed(self, node: _Node, exc: Exception) -> None:
        now = time.monotonic()
        delay = node.health.record_failure(f"{type(exc).__name__}: {exc}", now, self.backoff)
        if delay is None or now - node.logged_at_s < self.log_interval_s:
            return      # rate limit: a node down for an hour logs 60 lines, not 18000
        node.logged_at_s = now
        unexpected = not isinstance(exc, (NodeError, TemplateError))
        log.warning("node_down node=%s failures=%d retry_in_s=%.2f error=%s", node.health.name,
                    node.health.failures, delay, node.health.last_error, exc_info=exc if unexpected else None)


def without_commitment_before_segwit(raw: dict) -> dict:
    """The template as it may be mined: no witness commitment while its `rules` show segwit not in force.

    BIP9's getblocktemplate `rules` lists the rules in force for the block ("!segwit" once segwit is,
    BIP145). Before activation any witness data in a block, the coinbase's reserved value included,
    makes it invalid (`unexpected-witness`). Bitcoin Core then sends no `default_witness_commitment`;
    bcoin 1.0.2 sends one whenever the request lists "segwit" (a fresh regtest chain below height 432),
    so it is dropped here. A template with witness transactions but without segwit in force cannot be
    mined at all. A reply without a `rules` list (a node without BIP9) is left as it is.
    """
    rules = raw.get("rules")
    if not isinstance(rules, list) or "segwit" in rules or "!segwit" in rules:
        return raw
    for i, tx in enumerate(raw.get("transactions") or ()):
        if isinstance(tx, dict) and tx.get("hash", tx.get("txid")) != tx.get("txid"):
            raise TemplateError(f"transactions[{i}] has witness data but segwit is not among the rules {rules}")
    if raw.get("default_witness_commitment") is None:
        return raw
    return {key: value for key, value in raw.items() if key != "default_witness_commitment"}


def _per_node(value: str | Sequence[str | None] | None, count: int, key: str) -> list[str | None]:
    """A list gives one entry per node ("" for none); a single string belongs to the first node only,
    because a cookie file or a ZMQ endpoint is local to one bitcoind (the others poll, or use URL auth)."""
    if value is None or isinstance(value, str):
        return [value or None] + [None] * (count - 1)
    if len(value) != count:
        raise ValueError(f"node.{key}: has {len(value)} entries, node.rpc_urls has {count}")
    return [v or None for v in value]
