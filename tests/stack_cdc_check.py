#!/usr/bin/env python3
"""Through the dev stack: responses submitted to the forms API over HTTP reach the responses
topic and decode with Confluent's client through `collect registry` (tests/confluent_check.py).

usage: stack_cdc_check.py .collect/stack.json [count]
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request


def call(stack, method, path, body=None):
    req = urllib.request.Request(
        stack["api_url"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + stack["api_key"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def main():
    stack = json.load(open(sys.argv[1]))
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    forms = [call(stack, "POST", "/v1/forms", {"title": f"stack check {i}", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": True},
        {"label": "Plan", "type": "single_choice", "alias": "plan",
         "options": [{"code": "free", "label": "Free"}, {"code": "pro", "label": "Pro"}]}]})["id"]
        for i in range(3)]
    ids = []
    for i in range(count):
        r = call(stack, "POST", f"/v1/forms/{forms[i % 3]}/responses",
                 {"answers": {"name": f"stack {i}", "plan": "pro" if i % 2 else "free"}})
        ids.append(r["id"])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
    check = os.path.join(os.path.dirname(os.path.abspath(__file__)), "confluent_check.py")
    result = subprocess.run([sys.executable, check, "--brokers", stack["broker"], "--registry",
                             stack["registry_url"], "--topic", stack["topics"]["responses"],
                             "--expect-file", f.name, "--timeout", "120"])
    os.unlink(f.name)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
