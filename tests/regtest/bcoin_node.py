"""A real full node for tests: bcoin 1.0.2 on regtest, in memory, on free loopback ports.

bcoin is an independent Bitcoin full-node implementation (JavaScript) with a Bitcoin-Core-compatible
JSON-RPC (`getblocktemplate`, `submitblock`, `getblock`, `generatetoaddress`, ...) and full consensus
validation, segwit included. `.ci/run` installs it with `npm install --ignore-scripts bcoin@1.0.2` into
KZPOOL_BCOIN_DIR (default ~/.cache/kzpool-bcoin). It is started as

    NODE_BACKEND=js node -r tests/regtest/bcoin_preload.cjs $KZPOOL_BCOIN_DIR/node_modules/bcoin/bin/node \
        --network=regtest --memory=true ...

NODE_BACKEND=js selects bcoin's pure-JS crypto (no native add-on was built); the preload stubs the
on-disk database module and makes regtest enforce BIP34 from height 1 as Bitcoin Core's regtest does.
P2P: no listening socket, and outbound connections only to 127.0.0.1:1 (refused at once), so the node
never talks to anything but the test.

The skip rule is tests/db_fixtures.py's: without bcoin (or without node) the tests skip on a developer's
machine and fail under CI=true, so a CI run can never pass without having run them.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ci_required import unavailable

from db_fixtures import TIMEOUT_FACTOR

HERE = Path(__file__).resolve().parent
PRELOAD = HERE / "bcoin_preload.cjs"
BCOIN_VERSION = "1.0.2"
API_KEY = "kzpool-regtest-api-key"


def bcoin_dir() -> Path:
    return Path(os.environ.get("KZPOOL_BCOIN_DIR") or Path.home() / ".cache" / "kzpool-bcoin")


def bcoin_entry() -> Path:
    return bcoin_dir() / "node_modules" / "bcoin" / "bin" / "node"


def bcoin_missing() -> str | None:
    """Why bcoin cannot be started here, or None if it can."""
    if shutil.which("node") is None:
        return "no `node` executable on PATH"
    entry = bcoin_entry()
    if not entry.is_file():
        return (f"bcoin not installed at {bcoin_dir()} (cd there; npm install --ignore-scripts "
                f"bcoin@{BCOIN_VERSION}; or set KZPOOL_BCOIN_DIR)")
    return None


def require_bcoin() -> None:
    reason = bcoin_missing()
    if reason is None:
        return
    unavailable(f"{reason} (.ci/run installs it)", "the regtest tests against bcoin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcFailure(RuntimeError):
    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error


class BcoinNode:
    """One bcoin regtest node process. `rpc()` is the node's JSON-RPC; `wallet_http()` its wallet's REST API."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.rpc_port = free_port()
        self.wallet_port = free_port()
        self.log_path = workdir / "bcoin.log"
        self.proc: subprocess.Popen | None = None
        self.api_key = API_KEY
        self._auth = "Basic " + base64.b64encode(f"x:{API_KEY}".encode()).decode()

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        prefix = self.workdir / "bcoin-data"
        prefix.mkdir(parents=True, exist_ok=True)
        args = ["node", "-r", str(PRELOAD), str(bcoin_entry()),
                "--network=regtest", "--memory=true", f"--prefix={prefix}",
                "--workers=false", "--listen=false", "--max-outbound=1", "--only=127.0.0.1:1",
                "--http-host=127.0.0.1", f"--http-port={self.rpc_port}",
                f"--wallet-http-port={self.wallet_port}", f"--api-key={self.api_key}",
                "--log-level=info"]
        env = dict(os.environ, NODE_BACKEND="js")
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s * TIMEOUT_FACTOR
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"bcoin exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.rpc("getblockchaininfo")
                self.wallet_http("GET", "/wallet/primary")
                return
            except (OSError, RpcFailure):
                if time.monotonic() > deadline:
                    raise AssertionError(f"bcoin RPC not up after {timeout_s} s:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()           # in memory: nothing to flush
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # HTTP ----------------------------------------------------------------------------------------
    def _post(self, url: str, method: str, body: Any, timeout_s: float) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Authorization": self._auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                return json.loads(text)
            except ValueError:
                raise RpcFailure(url, f"HTTP {exc.code}: {text[:500]}") from None

    def rpc(self, method: str, *params: Any, timeout_s: float = 30.0) -> Any:
        reply = self._post(self.rpc_url + "/", "POST", {"jsonrpc": "1.0", "id": 1, "method": method,
                                                       "params": list(params)}, timeout_s)
        if reply.get("error"):
            raise RpcFailure(method, reply["error"])
        return reply["result"]

    def wallet_http(self, verb: str, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        reply = self._post(f"http://127.0.0.1:{self.wallet_port}{path}", verb, body, timeout_s)
        if isinstance(reply, dict) and reply.get("error"):
            raise RpcFailure(path, reply["error"])
        return reply

    # Wallet helpers (bcoin's REST wallet API) ----------------------------------------------------
    def create_witness_wallet(self, wallet_id: str) -> None:
        self.wallet_http("PUT", f"/wallet/{wallet_id}", {"witness": True})

    def new_address(self, wallet_id: str) -> dict[str, Any]:
        """A fresh receive address: `address` (bcoin's regtest encoding), `program` (hex), `type`."""
        return self.wallet_http("POST", f"/wallet/{wallet_id}/address", {"account": "default"})

    def wait_for_coins(self, wallet_id: str, coins: int, timeout_s: float = 30.0) -> None:
        """Until the wallet has seen `coins` outputs: it follows the chain asynchronously, so right after
        `generatetoaddress` its balance may still lag."""
        deadline = time.monotonic() + timeout_s * TIMEOUT_FACTOR
        while (seen := self.wallet_http("GET", f"/wallet/{wallet_id}/balance")["coin"]) < coins:
            if time.monotonic() > deadline:
                raise AssertionError(f"wallet {wallet_id} saw {seen} of {coins} coins")
            time.sleep(0.05)

    def send(self, wallet_id: str, address: str, value_sat: int) -> dict[str, Any]:
        """Sends from the wallet; the answer has `hash` (txid), `fee` (sat) and `tx` (hex with witness)."""
        return self.wallet_http("POST", f"/wallet/{wallet_id}/send",
                                {"outputs": [{"address": address, "value": value_sat}]})


@pytest.fixture
def bcoin(tmp_path: Path):
    """A fresh, empty bcoin regtest node (genesis only), stopped after the test."""
    require_bcoin()
    node = BcoinNode(tmp_path)
    try:
        node.start()
        yield node
    finally:
        node.stop()
