"""The sans-IO session, driven line by line with no socket: handshake, every submit refusal, vectors."""
from __future__ import annotations

import json

import pytest

from pool.validation import PythonShareHasher
from stratum.errors import ErrorCode
from stratum.interfaces import Refusal
from stratum.jobbook import JobBook
from stratum.extranonce import Extranonce1Allocator
from stratum.session import AuthorizeRequest, Close, SessionConfig, ShareRejected, State

from stratum_fixtures import BLOCK_100K, TESTNET, SessionDriver, job_from_notify, lines, req, target_from_nbits, make_testnet_job

HASHER = PythonShareHasher()
SUBMIT = ["demo.rig1"] + TESTNET["submit_params"][1:5]


def errors(events):
    return [(m["id"], m["error"][0]) for m in lines(events) if m.get("error")]


def results(events):
    return {m["id"]: m["result"] for m in lines(events) if "result" in m and m.get("id") is not None}


def ready_driver(job=None) -> SessionDriver:
    d = SessionDriver()
    d.jobs.add(job or make_testnet_job())
    d.handshake(resume="08000002")
    return d


def test_handshake_replies_and_first_job_order():
    d = SessionDriver()
    d.jobs.add(make_testnet_job())
    out = lines(d.handshake())
    configure, subscribe, authorize = out[0], out[1], out[2]
    assert configure == {"id": 1, "result": {"version-rolling": True, "version-rolling.mask": "1fffe000"},
                         "error": None}
    subs, en1, en2_size = subscribe["result"]
    assert [s[0] for s in subs] == ["mining.set_difficulty", "mining.notify"]
    assert len(bytes.fromhex(en1)) == 4 and en2_size == 4
    assert authorize == {"id": 3, "result": True, "error": None}
    # set_difficulty always precedes the first notify
    assert [m.get("method") for m in out[3:]] == ["mining.set_difficulty", "mining.notify"]
    assert out[4]["params"] == TESTNET["notify_params"][:8] + [True]
    assert d.session.state == State.AUTHORIZED


def test_version_rolling_intersection_and_min_bit_count():
    d = SessionDriver()
    out = lines(d.send(req(1, "mining.configure", [["version-rolling", "minimum-difficulty", "subscribe-extranonce",
                                                    "info", "x-unknown"],
                                                   {"version-rolling.mask": "00ffff00",
                                                    "minimum-difficulty.value": 0.5,
                                                    "info.hw-version": "S19"}])))
    r = out[0]["result"]
    assert r["version-rolling"] is True and r["version-rolling.mask"] == f"{0x00ffff00 & 0x1fffe000:08x}"
    assert r["minimum-difficulty"] is True and r["subscribe-extranonce"] is True and r["info"] is True
    assert r["x-unknown"] is False
    assert d.session.vardiff.floor == 0.5
    d2 = SessionDriver()
    out = lines(d2.send(req(1, "mining.configure", [["version-rolling"], {"version-rolling.mask": "00002000",
                                                                          "version-rolling.min-bit-count": 2}])))
    assert out[0]["result"] == {"version-rolling": False}


def test_subscribe_resume_gives_back_free_extranonce1_only():
    d = SessionDriver()
    d.handshake(resume="0000abcd")
    assert d.session.extranonce1.hex() == "0000abcd"
    other = SessionDriver(jobs=d.jobs, allocator=d.allocator)
    other.handshake(resume="0000abcd")
    assert other.session.extranonce1.hex() != "0000abcd"      # in use: a fresh one instead
    d.session.close()
    third = SessionDriver(jobs=d.jobs, allocator=d.allocator)
    third.handshake(resume="0000abcd")
    assert third.session.extranonce1.hex() == "0000abcd"


def test_worked_example_share_is_accepted_and_is_a_block():
    d = ready_driver()
    checks = d.checks(d.submit(10, SUBMIT))
    assert len(checks) == 1
    result = HASHER.hash_batch(checks[0].job, [checks[0].submission])[0]
    assert result.hash_display == TESTNET["block_hash"]
    assert result.meets_share and result.meets_network
    assert results(d.session.finish_share(checks[0], result, d.now)) == {10: True}


def test_block_100000_job_through_the_session_is_a_block():
    params = BLOCK_100K["notify_params"]
    job = job_from_notify(params, target_from_nbits(int(params[6], 16)))
    d = SessionDriver(cfg=SessionConfig(extranonce2_size=1, start_difficulty=1.0), allocator=Extranonce1Allocator(1))
    d.jobs.add(job)
    d.handshake(resume="06")
    assert d.session.extranonce1 == b"\x06"
    check = d.checks(d.submit(5, ["demo.rig1"] + BLOCK_100K["submit_params"][1:]))[0]
    result = HASHER.hash_batch(check.job, [check.submission])[0]
    assert result.hash_display == "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506"
    assert result.meets_network


@pytest.mark.parametrize("mutate, code", [
    (lambda p: ["nobody.rig"] + p[1:], ErrorCode.UNAUTHORIZED_WORKER),
    (lambda p: p[:1] + ["nope"] + p[2:], ErrorCode.JOB_NOT_FOUND),
    (lambda p: p[:2] + ["0001"] + p[3:], ErrorCode.OTHER),                 # extranonce2 of the wrong length
    (lambda p: p[:2] + ["zz000001"] + p[3:], ErrorCode.OTHER),             # not hex
    (lambda p: p[:3] + ["504e86b8"] + p[4:], ErrorCode.OTHER),             # ntime before the job's
    (lambda p: p[:3] + [f"{0x504e86b9 + 7001:08x}"] + p[4:], ErrorCode.OTHER),   # too far ahead
    (lambda p: p + ["e0000000"], ErrorCode.OTHER),                         # version bits outside the mask
    (lambda p: p[:4], ErrorCode.OTHER),                                    # too few params
])
def test_submit_refusals(mutate, code):
    d = ready_driver()
    events = d.submit(11, mutate(list(SUBMIT)))
    assert not d.checks(events)
    assert errors(events) == [(11, code)]
    assert any(isinstance(e, ShareRejected) for e in events)


def test_check_order_unauthorized_before_stale():
    d = ready_driver()
    events = d.submit(12, ["nobody.rig", "nope", "zz", "zz", "zz"])
    assert errors(events) == [(12, ErrorCode.UNAUTHORIZED_WORKER)]


def test_not_subscribed():
    d = SessionDriver()
    events = d.submit(4, SUBMIT)
    assert errors(events) == [(4, ErrorCode.NOT_SUBSCRIBED)]
    events = d.send(req(5, "mining.authorize", ["demo.rig1", "x"]))
    assert errors(events) == [(5, ErrorCode.NOT_SUBSCRIBED)]


def test_duplicate_and_version_bits_in_key():
    d = ready_driver()
    params = list(SUBMIT)
    assert d.checks(d.submit(20, params))
    assert errors(d.submit(21, params)) == [(21, ErrorCode.DUPLICATE_SHARE)]
    # the same nonce with other (allowed) version bits is another header, not a duplicate
    assert d.checks(d.submit(22, params + ["00002000"]))
    assert errors(d.submit(23, params + ["00002000"])) == [(23, ErrorCode.DUPLICATE_SHARE)]


def test_version_rolling_formula_reaches_the_header():
    d = ready_driver()
    check = d.checks(d.submit(30, list(SUBMIT) + ["00002000"]))[0]
    assert check.submission.version == (0x00000002 & ~0x1FFFE000) | 0x2000


def test_low_difficulty_share_is_refused_with_23():
    d = ready_driver()
    check = d.checks(d.submit(40, SUBMIT))[0]
    result = HASHER.hash_batch(check.job, [check.submission])[0]
    low = type(result)(result.hash, False, False)
    assert errors(d.session.finish_share(check, low, d.now)) == [(40, ErrorCode.LOW_DIFFICULTY)]


def test_stale_after_clean_job_but_not_after_refresh():
    d = ready_driver()
    base = make_testnet_job()
    refresh = job_from_notify(["c0"] + TESTNET["notify_params"][1:], base.network_target, clean=False)
    d.session.job_message(refresh, b"")
    d.jobs.add(refresh)
    assert d.checks(d.submit(50, SUBMIT))          # older job of the same tip
    clean = job_from_notify(["c1"] + TESTNET["notify_params"][1:], base.network_target, clean=True)
    d.jobs.add(clean)
    d.session.job_message(clean, b"")
    params = list(SUBMIT)
    params[4] = "00000001"
    assert errors(d.submit(51, params)) == [(51, ErrorCode.JOB_NOT_FOUND)]


def test_share_judged_at_difficulty_in_force_when_job_was_sent():
    d = ready_driver()
    assert d.session.job_difficulty("bf")[1] == 1.0
    events = d.send(req(60, "mining.suggest_difficulty", [4.0]))
    out = lines(events)
    assert out[0] == {"id": 60, "result": True, "error": None}
    assert out[1] == {"id": None, "method": "mining.set_difficulty", "params": [4.0]}
    reissued = out[2]["params"][0]
    assert out[2]["method"] == "mining.notify" and reissued.startswith("bf.") and out[2]["params"][8] is False
    # the old job id keeps difficulty 1, the re-issued one carries 4
    assert d.session.job_difficulty("bf")[1] == 1.0
    assert d.session.job_difficulty(reissued)[1] == 4.0
    check = d.checks(d.submit(61, [SUBMIT[0], reissued] + SUBMIT[2:5]))[0]
    assert check.difficulty == 4.0 and check.job.job_id == "bf"
    # the same work under the old id is a duplicate, not a second share
    assert errors(d.submit(62, SUBMIT)) == [(62, ErrorCode.DUPLICATE_SHARE)]


def test_fractional_suggest_difficulty_is_clamped():
    d = SessionDriver()
    d.send(req(1, "mining.suggest_difficulty", [1e-12]))
    assert d.session.vardiff.difficulty == pytest.approx(1e-8)
    d.send(req(2, "mining.suggest_difficulty", [0.015625]))
    assert d.session.vardiff.difficulty == 0.015625
    assert errors(d.send(req(3, "mining.suggest_difficulty", ["x"]))) == [(3, ErrorCode.OTHER)]


def test_unknown_method_is_error_20_without_close_and_notifications_get_no_reply():
    d = ready_driver()
    events = d.send(req(7, "mining.get_transactions", []))
    assert errors(events) == [(7, ErrorCode.OTHER)]
    assert not any(isinstance(e, Close) for e in events)
    assert lines(d.send(req(None, "mining.extranonce.subscribe", []))) == []


def test_malformed_json_and_oversized_line():
    d = ready_driver()
    out = lines(d.send(b'{"id": 1, "method": \n'))
    assert out[0]["error"][0] == ErrorCode.OTHER and out[0]["id"] is None
    events = d.send(b"x" * (d.cfg.max_line_bytes + 10))
    assert any(isinstance(e, Close) and "max_line_bytes" in e.reason for e in events)


def test_authorization_refusal_is_24_with_reason():
    d = SessionDriver()
    d.send(req(2, "mining.subscribe", []))
    events = d.session.receive_data(req(3, "mining.authorize", ["bad.rig", "x"]), d.now)
    (auth,) = [e for e in events if isinstance(e, AuthorizeRequest)]
    out = lines(d.session.finish_authorize(auth, Refusal("unknown_login", "Unknown login"), d.now))
    assert out == [{"id": 3, "result": None, "error": [24, "Unknown login", None]}]
    assert d.session.state == State.SUBSCRIBED


def test_pipelined_lines_wait_for_authorization():
    d = SessionDriver()
    d.jobs.add(make_testnet_job())
    d.send(req(2, "mining.subscribe", ["x", "08000002"]))
    batch = req(3, "mining.authorize", ["demo.rig1", "x"]) + req(4, "mining.submit", SUBMIT)
    events = d.session.receive_data(batch, d.now)
    assert [type(e).__name__ for e in events] == ["AuthorizeRequest"]
    # more bytes while the authorizer works: still held, in order
    assert d.session.receive_data(req(5, "mining.extranonce.subscribe", []), d.now) == []
    from stratum.interfaces import Account
    d.session.finish_authorize(events[0], Account("demo", "demo.rig1"), d.now)
    later = d.session.receive_pending(d.now)
    assert [c.msg_id for c in d.checks(later)] == [4]
    assert results(later) == {5: True}


def test_several_workers_per_connection():
    d = ready_driver()
    d.send(req(70, "mining.authorize", ["demo.rig2", "x"]))
    assert set(d.session.workers) == {"demo.rig1", "demo.rig2"}
    params = ["demo.rig2"] + SUBMIT[1:5]
    assert d.checks(d.submit(71, params))[0].worker == "demo.rig2"


def test_misbehaviour_cost_closes_after_hard_limit():
    d = ready_driver()
    closed = False
    for i in range(100):
        events = d.send(b"{not json}\n")
        if any(isinstance(e, Close) for e in events):
            closed = True
            break
    assert closed and i < 100


def test_set_extranonce_only_for_subscribed_miners():
    d = ready_driver()
    assert d.session.set_extranonce(b"\x01\x02\x03\x04", 4) is None
    d.send(req(80, "mining.extranonce.subscribe", []))
    msg = json.loads(d.session.set_extranonce(b"\x01\x02\x03\x04", 4))
    assert msg == {"id": None, "method": "mining.set_extranonce", "params": ["01020304", 4]}


def test_jobbook_bounds_and_drops():
    book = JobBook(max_jobs=3)
    base = make_testnet_job()
    ids = []
    for i in range(5):
        job = job_from_notify([f"j{i}"] + TESTNET["notify_params"][1:], base.network_target, clean=False)
        ids.append(job.job_id)
        book.add(job)
    assert len(book) == 3 and "j0" not in book and "j4" in book


def test_per_session_job_memory_is_bounded_on_a_long_tip():
    d = ready_driver()
    base = make_testnet_job()
    for i in range(500):
        job = job_from_notify([f"r{i}"] + TESTNET["notify_params"][1:], base.network_target, clean=False)
        d.jobs.add(job)
        d.session.job_message(job, b"")
    assert len(d.session._job_difficulty) <= 2 * d.jobs.max_jobs + 1
    assert d.session.job_difficulty("r499") is not None and d.session.job_difficulty("r0") is None
