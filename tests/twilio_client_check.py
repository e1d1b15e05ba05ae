#!/usr/bin/env python3
"""The SMS emulator driven by Twilio's own Python helper library (`twilio`, pinned in
tests/twilio_client_setup.sh), unchanged but for the host it talks to: send, fetch, list with
auto-paging, Twilio's errors as TwilioRestException, and num_segments of GSM-7 and UCS-2
bodies, each checked against what the emulator's message log holds.

usage: twilio_client_check.py http://127.0.0.1:8091      # an emulator already running
       twilio_client_check.py --collect target/debug/collect
                                 # starts `collect emulate sms` on a free port, stops it after

Pointing the library elsewhere: every call of `client.messages` goes through the API
domain `client.api`, whose `base_url` (`https://api.twilio.com` by default) the library
joins with each path and with each page's `next_page_uri` (twilio/base/domain.py,
`Domain.absolute_url`), so setting `client.api.base_url` before the first call is all it
takes; no edge or region is set, so the library leaves the host alone.

Prints 'N passed, M failed' and exits non-zero when a check failed.
"""

import datetime
import json
import socket
import subprocess
import sys
import time
import traceback
import urllib.request

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

FROM = "+15005550006"  # Twilio's magic valid sender


def admin(base, method, path, body=None):
    req = urllib.request.Request(
        base + "/emulator/" + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def client_for(base, sid, token):
    client = Client(sid, token)
    client.api.base_url = base
    return client


def logged(base, sid):
    found = [m for m in admin(base, "GET", "messages") if m["sid"] == sid]
    if len(found) != 1:
        raise AssertionError(f"{sid} is in the message log {len(found)} times")
    return found[0]


def expect_error(send, code, status):
    try:
        m = send()
    except TwilioRestException as e:
        if (e.code, e.status) != (code, status):
            raise AssertionError(f"expected {code}/{status}, got {e.code}/{e.status}: {e.msg}")
        return e
    raise AssertionError(f"expected {code}, the message was accepted: {m.sid}")


def checks(base):
    account = admin(base, "POST", "accounts")
    sid, token = account["account_sid"], account["auth_token"]
    client = client_for(base, sid, token)
    admin(base, "PUT", "limits", {"per_sender_per_second": 1000, "account_per_second": 1000})

    def send_create():
        m = client.messages.create(to="+4791234567", from_=FROM, body="Hello from twilio-python")
        assert m.sid.startswith("SM") and len(m.sid) == 34, m.sid
        assert (m.status, m.to, m.from_, m.num_segments) == ("queued", "+4791234567", FROM, "1"), m
        assert isinstance(m.date_created, datetime.datetime) and m.date_created.tzinfo, m.date_created
        log = logged(base, m.sid)
        assert (log["body"], log["to"], log["encoding"]) == ("Hello from twilio-python", "+4791234567", "GSM-7"), log

    def fetch():
        m = client.messages.create(to="+4791234567", from_=FROM, body="fetch me")
        f = client.messages(m.sid).fetch()
        assert (f.sid, f.body, f.to, f.num_segments) == (m.sid, "fetch me", "+4791234567", "1"), f
        assert f.body == logged(base, m.sid)["body"]

    def list_with_paging():
        to = "+4791111111"
        sent = [client.messages.create(to=to, from_=FROM, body=f"page {i}").sid for i in range(23)]
        client.messages.create(to="+4792222222", from_=FROM, body="someone else")
        newest_first = list(reversed(sent))
        # list() follows next_page_uri across pages of 5 (five requests).
        listed = [m.sid for m in client.messages.list(to=to, page_size=5)]
        assert listed == newest_first, (len(listed), listed[:3])
        # A limit stops it early; stream() pages lazily.
        assert [m.sid for m in client.messages.list(to=to, limit=7, page_size=3)] == newest_first[:7]
        assert [m.sid for m in client.messages.stream(to=to, page_size=4)] == newest_first
        # A limit alone is sent as the page size.
        assert [m.sid for m in client.messages.list(to=to, limit=12)] == newest_first[:12]
        # One page, then the next through the library's next_page().
        page = client.messages.page(to=to, page_size=10)
        second = page.next_page()
        assert [m.sid for m in page] + [m.sid for m in second] == newest_first[:20]
        # DateSent> as the library sends a datetime (YYYY-MM-DDThh:mm:ssZ).
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
        assert [m.sid for m in client.messages.list(to=to, date_sent_after=since, page_size=6)] == newest_first
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        assert client.messages.list(to=to, date_sent_after=later) == []
        # Every listed message is one the log holds for that recipient.
        log_sids = {m["sid"] for m in admin(base, "GET", "messages") if m["to"] == to}
        assert set(listed) == log_sids, (len(listed), len(log_sids))

    def error_21211_invalid_to():
        before = len(admin(base, "GET", "messages"))
        e = expect_error(lambda: client.messages.create(to="+1234", from_=FROM, body="x"), 21211, 400)
        assert "+1234" in e.msg, e.msg
        assert len(admin(base, "GET", "messages")) == before, "a refused message was logged"

    def error_21610_opted_out():
        admin(base, "POST", "opt-outs", {"number": "+4790000000"})
        expect_error(lambda: client.messages.create(to="+4790000000", from_=FROM, body="x"), 21610, 400)

    def error_20003_wrong_token():
        wrong = client_for(base, sid, "0" * 32)
        expect_error(lambda: wrong.messages.create(to="+4791234567", from_=FROM, body="x"), 20003, 401)
        # A list page the library cannot fetch is a plain TwilioException holding the answer.
        try:
            wrong.messages.list(limit=1)
            raise AssertionError("a list with a wrong token was answered")
        except TwilioRestException:
            raise
        except TwilioException as e:
            response = e.args[1]
            code = json.loads(response.text)["code"]
            assert (response.status_code, code) == (401, 20003), (response.status_code, code)

    def error_21617_too_long():
        expect_error(lambda: client.messages.create(to="+4791234567", from_=FROM, body="x" * 1601), 21617, 400)

    def error_20404_unknown_sid():
        expect_error(lambda: client.messages("SM" + "0" * 32).fetch(), 20404, 404)

    def segments_gsm7_with_extension_characters():
        # 157 characters, but each of {}[] is an escape and a septet: 161 septets, 2 segments.
        body = "a" * 153 + "{}[]"
        m = client.messages.create(to="+4791234567", from_=FROM, body=body)
        assert m.num_segments == "2", m.num_segments
        log = logged(base, m.sid)
        assert (log["num_segments"], log["encoding"]) == ("2", "GSM-7"), log
        m = client.messages.create(to="+4791234567", from_=FROM, body="€" * 80)
        assert (m.num_segments, logged(base, m.sid)["encoding"]) == ("1", "GSM-7")

    def segments_ucs2():
        m = client.messages.create(to="+4791234567", from_=FROM, body="ж" * 71)
        assert m.num_segments == "2", m.num_segments
        assert client.messages(m.sid).fetch().num_segments == "2"
        log = logged(base, m.sid)
        assert (log["num_segments"], log["encoding"]) == ("2", "UCS-2"), log
        # An emoji is two UTF-16 code units: 36 of them take two segments.
        m = client.messages.create(to="+4791234567", from_=FROM, body="😀" * 36)
        assert (m.num_segments, logged(base, m.sid)["encoding"]) == ("2", "UCS-2")

    return [
        send_create,
        fetch,
        list_with_paging,
        error_21211_invalid_to,
        error_21610_opted_out,
        error_20003_wrong_token,
        error_21617_too_long,
        error_20404_unknown_sid,
        segments_gsm7_with_extension_characters,
        segments_ucs2,
    ]


def run(base):
    passed = failed = 0
    for check in checks(base):
        try:
            check()
            passed += 1
            print(f"ok   {check.__name__}", flush=True)
        except Exception:  # every failure is reported, then the next check runs
            failed += 1
            print(f"FAIL {check.__name__}", flush=True)
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return failed == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_emulator(collect):
    """Starts `collect emulate sms` on a free port, runs the checks, stops it."""
    addr = f"127.0.0.1:{free_port()}"
    base = f"http://{addr}"
    proc = subprocess.Popen([collect, "emulate", "sms", "--listen", addr])
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"collect emulate sms exited with {proc.returncode}")
            try:
                admin(base, "GET", "stats")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the emulator did not answer on {addr} within 30 s")
                time.sleep(0.1)
        return run(base)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--collect":
        ok = with_emulator(args[1])
    elif len(args) == 1 and args[0].startswith("http"):
        ok = run(args[0].rstrip("/"))
    else:
        raise SystemExit(__doc__)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
