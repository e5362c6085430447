"""Bitcoin Core's JSON-RPC argument checks, shared by the test stand-ins for a node
(tests/bitcoind_standin.py) and a wallet (tests/payouts/wallet_standin.py): positional or named
parameters, the argument count, and the JSON type of each, with Core's error codes and messages."""
from __future__ import annotations

from typing import Any

TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number",
              type(None): "null"}

# name -> [(argument, accepted type or types, required)], as Core's RPC help lists them.
Specs = dict[str, list[tuple[str, "type | tuple[type, ...]", bool]]]


class RpcFault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def check_params(specs: Specs, method: str, params: list | dict) -> list[Any]:
    """The positional arguments of a call, or RpcFault as Core answers a bad one."""
    spec = specs[method]
    if isinstance(params, dict):
        names = [name for name, _, _ in spec]
        unknown = [k for k in params if k not in names]
        if unknown:
            raise RpcFault(-8, f"Unknown named parameter {unknown[0]}")
        params = [params.get(name) for name in names]
        while params and params[-1] is None:
            params.pop()
    required = sum(1 for _, _, req in spec if req)
    if not required <= len(params) <= len(spec):
        raise RpcFault(-1, f"{method} takes {required}..{len(spec)} arguments (see help {method})")
    for position, (value, (name, accepted, _)) in enumerate(zip(params, spec), start=1):
        kinds = accepted if isinstance(accepted, tuple) else (accepted,)
        if value is not None and type(value) not in kinds:    # exact types: a bool is not a number
            expected = "/".join(sorted({TYPE_NAMES[k] for k in kinds}))
            raise RpcFault(-3, f'Wrong type passed:\n{{\n    "Position {position} ({name})": "JSON value of type '
                               f'{TYPE_NAMES.get(type(value), "object")} is not of expected type {expected}"\n}}')
    return list(params)
