#!/usr/bin/env python3
"""Through the dev stack: responses submitted to the demo form over the forms API reach the
demo's Google Sheet (the emulator), one row each, read back with a plain Sheets v4
values.get and the access token that .collect/stack.json names; an edit lands in place; and
the demo's SMS integration texts each response once (the SMS emulator's message log).

usage: stack_sheets_check.py .collect/stack.json [count]
"""

import json
import sys
import time
import urllib.error
import urllib.request


def request(url, token, method="GET", body=None):
    req = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def main():
    stack = json.load(open(sys.argv[1]))
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    demo = stack["demo"]
    form = f'{stack["api_url"]}/v1/forms/{demo["form_id"]}/responses'
    ids = []
    for i in range(count):
        r = request(form, stack["api_key"], "POST",
                    {"answers": {"name": f"sheet check {i}", "guests": i % 4, "meal": "fish"}})
        ids.append(r["id"])
    request(f"{form}/{ids[0]}", stack["api_key"], "PATCH", {"answers": {"name": "edited in place"}})

    deadline = time.monotonic() + 120
    while True:
        try:
            rows = request(demo["values_get"], demo["access_token"]).get("values", [])
        except urllib.error.HTTPError as e:
            if e.code != 400:
                raise
            rows = []  # the connector has not made the tab yet: Google answers 400 for the range
        by_id = {}
        for row in rows[1:]:
            if row:
                by_id.setdefault(row[0], []).append(row)
        present = [i for i in ids if i in by_id]
        edited = ids[0] in by_id and by_id[ids[0]][0][5] == "edited in place"
        if len(present) == len(ids) and edited:
            break
        if time.monotonic() > deadline:
            sys.exit(f"after 120 s the sheet has {len(present)} of {len(ids)} responses "
                     f"(edit applied: {edited})")
        time.sleep(0.5)
    dupes = {k: len(v) for k, v in by_id.items() if len(v) > 1}
    if dupes:
        sys.exit(f"responses with more than one row: {dupes}")
    if rows[0][:6] != ["Response ID", "Submitted at", "Updated at", "Revision", "Status", "Name"]:
        sys.exit(f"unexpected header: {rows[0]}")
    if by_id[ids[0]][0][3] != "2":
        sys.exit(f"the edit is not revision 2: {by_id[ids[0]][0]}")
    print(f"stack sheets check: {len(ids)} responses, one row each, edit in place "
          f"({len(rows) - 1} rows in the sheet)")

    # The demo's SMS integration texts the organizer once per response (the edit sends
    # nothing more), read back from the SMS emulator's message log.
    deadline = time.monotonic() + 120
    while True:
        with urllib.request.urlopen(stack["sms_emulator_url"] + "/emulator/messages", timeout=30) as r:
            messages = json.loads(r.read())
        per = {}
        for m in messages:
            if m["account_sid"] == demo["sms_account_sid"]:
                ref = m["body"].rsplit("Ref ", 1)[-1]
                per[ref] = per.get(ref, 0) + 1
        if all(i in per for i in ids):
            break
        if time.monotonic() > deadline:
            sys.exit(f"after 120 s {sum(1 for i in ids if i in per)} of {len(ids)} responses were texted")
        time.sleep(0.5)
    time.sleep(2)  # anything sent twice would show by now
    with urllib.request.urlopen(stack["sms_emulator_url"] + "/emulator/messages", timeout=30) as r:
        messages = json.loads(r.read())
    twice = [i for i in ids if sum(1 for m in messages if m["body"].endswith("Ref " + i)) != 1]
    if twice:
        sys.exit(f"responses texted other than once: {twice}")
    print(f"stack sms check: {len(ids)} responses, one SMS each")


if __name__ == "__main__":
    main()
