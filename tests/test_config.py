"""The typed config: defaults == config/demo.toml, --set overrides, named errors, secrets redacted."""
from __future__ import annotations

from pathlib import Path

import pytest

from pool.allowlist_auth import AllowlistAuthorizer
from pool.config import ConfigError, PoolConfig, load_config, redacted
from stratum.interfaces import Account, Peer, Refusal

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def test_demo_file_spells_out_the_embedded_default():
    assert load_config(CONFIG_DIR / "demo.toml") == PoolConfig().validate()


def test_production_template_loads_once_filled_in():
    with pytest.raises(ConfigError, match="coinbase.payout_address"):
        load_config(CONFIG_DIR / "production.toml")
    cfg = load_config(CONFIG_DIR / "production.toml", ['coinbase.payout_address="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"',
                                                       'location.public_addresses=["203.0.113.5"]'])
    assert cfg.mode == "production" and cfg.node.source == "bitcoind" and cfg.chain.network == "mainnet"
    assert cfg.auth.authorizer == "registry" and cfg.compliance.require_datacentre_ip


@pytest.mark.parametrize("assignment, check", [
    ("stratum.port=4444", lambda c: c.stratum.port == 4444),
    ("node.source=bitcoind", lambda c: c.node.source == "bitcoind"),       # bare word -> string
    ('node.rpc_urls=["http://10.0.0.1:8332","http://10.0.0.2:8332"]', lambda c: len(c.node.rpc_urls) == 2),
    ("stratum.start_difficulty=1", lambda c: c.stratum.start_difficulty == 1.0),   # int -> float
    ('stratum.extra_ports=[{port=3334, min_difficulty=1e-8}]', lambda c: c.stratum.extra_ports[0].port == 3334),
])
def test_set_overrides_parse_as_toml(assignment, check):
    assert check(load_config(overrides=[assignment]))


@pytest.mark.parametrize("assignment, message", [
    ("stratum.bogus=1", "unknown config key 'stratum.bogus'"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ('stratum.port="x"', "stratum.port: expected an integer"),
    ("node.source=carrier-pigeon", "node.source"),
    ("stratum.min_difficulty=10", "min_difficulty"),
    ("mode=production", "pii_key_file"),
    ("chain.network=mainnet", "coinbase.payout_address"),            # the regtest demo address
    ("compliance.licence_poll_s=5", "licence_poll_s"),
    ("location.mode=sometimes", "location.mode"),
    ('accreditation.number="A-1"', "accreditation.issued"),
    ("curtailment.poll_s=3", "curtailment.poll_s"),
    ("energy.fee_rates=[{frm=1}]", "unknown config key 'energy.fee_rates\\[0\\].frm'"),
    ("stratum.version_mask=zz", "hex"),
    ("nonsense", "section.key=value"),
])
def test_bad_values_fail_with_the_key_name(assignment, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("'", ".")):
        load_config(overrides=[assignment])


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_secrets_are_redacted_and_env_password_used():
    cfg = load_config(overrides=["node.rpc_user=pool"], environ={"KZPOOL_RPC_PASSWORD": "hunter2"})
    assert cfg.node.rpc_password == "hunter2"
    assert redacted(cfg)["node"]["rpc_password"] == "***"
    assert "hunter2" not in repr(redacted(cfg))


@pytest.mark.parametrize("worker, host, expect", [
    ("demo.rig1", "127.0.0.1", "demo"),
    ("demo", "::1", "demo"),
    ("demo.x", "::ffff:127.0.0.1", "demo"),
    ("demo.rig1", "192.0.2.7", "address_not_allowed"),
    ("other.rig1", "127.0.0.1", "unknown_login"),
    ("demo.rig1", "not-an-ip", "address_not_allowed"),
])
async def test_demo_authorizer(worker, host, expect):
    result = await AllowlistAuthorizer.demo().authorize(worker, "x", Peer(host, 1))
    if isinstance(result, Account):
        assert result.login == expect and result.worker == worker
    else:
        assert isinstance(result, Refusal) and result.reason == expect


async def test_allowlist_authorizer_networks():
    auth = AllowlistAuthorizer(["farm1"], ["203.0.113.0/24", "2001:db8::/32"])
    assert isinstance(await auth.authorize("farm1.a", "", Peer("203.0.113.9", 1)), Account)
    assert isinstance(await auth.authorize("farm1.a", "", Peer("2001:db8::5", 1)), Account)
    assert isinstance(await auth.authorize("farm1.a", "", Peer("198.51.100.1", 1)), Refusal)
