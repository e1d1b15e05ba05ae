#!/usr/bin/env python3
"""Google's own Python client libraries against the Sheets emulator, unchanged.

    tests/google_client_check.py http://127.0.0.1:PORT     # an emulator already running
    tests/google_client_check.py --start target/debug/collect  # starts and stops its own

google-auth signs the service-account JWT and exchanges it at the key's token_uri (the
emulator's /token; the JWT's audience is Google's canonical token endpoint, as google-auth
always signs it); google-api-python-client builds the Sheets v4 client from the discovery
document it ships (static discovery) and calls the emulator at `api_endpoint`. Through them,
what people and the connector do to a shared spreadsheet: values update, append, get and
batchGet; batchUpdate with sortRange, insertDimension, deleteDimension, moveDimension, a tab
rename, a grid trim, addProtectedRange; developer metadata created, searched and followed
through those moves; values read and written by data filter; spreadsheets.get with a fields
mask. Prints 'N passed, M failed' and exits non-zero on any failure.

Set up with tests/google_client_setup.sh (pinned google-auth and google-api-python-client
in ${COLLECT_VENV:-$HOME/.cache/collect/venv}); run with that venv's python.
"""

import json
import re
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]
PROTECTED = (
    "You are trying to edit a protected cell or object. Please contact the spreadsheet "
    "owner to remove protection if you need to edit."
)

passed = 0
failed = []


def check(name, got, want):
    global passed
    if got == want:
        passed += 1
    else:
        failed.append(name)
        print(f"FAIL {name}: got {got!r}, want {want!r}", file=sys.stderr)


def admin(base, path, body):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def client(base, key):
    creds = service_account.Credentials.from_service_account_info(key, scopes=SCOPES)
    return build(
        "sheets",
        "v4",
        credentials=creds,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": base + "/"},
    )


def row_tag(row, value):
    return {
        "createDeveloperMetadata": {
            "developerMetadata": {
                "metadataKey": "responseId",
                "metadataValue": value,
                "visibility": "DOCUMENT",
                "location": {
                    "dimensionRange": {
                        "sheetId": 0,
                        "dimension": "ROWS",
                        "startIndex": row,
                        "endIndex": row + 1,
                    }
                },
            }
        }
    }


def rows(start, end):
    return {"sheetId": 0, "dimension": "ROWS", "startIndex": start, "endIndex": end}


def run(base):
    key = admin(base, "/emulator/service-accounts", {"name": "py-connector", "project": "py-check"})
    person = admin(base, "/emulator/service-accounts", {"name": "py-person", "project": "py-check"})
    created = admin(
        base,
        "/emulator/spreadsheets",
        {
            "title": "Google client check",
            "sheets": [{"title": "Responses", "rows": 20, "columns": 5}],
            "shared_with": [key["client_email"], person["client_email"]],
        },
    )
    sid = created["spreadsheetId"]
    api = client(base, key).spreadsheets()
    other = client(base, person).spreadsheets()

    def values(rng):
        return api.values().get(spreadsheetId=sid, range=rng).execute().get("values", [])

    def batch(requests, who=None):
        return (who or api).batchUpdate(spreadsheetId=sid, body={"requests": requests}).execute()

    def where(value):
        found = (
            api.developerMetadata()
            .search(
                spreadsheetId=sid,
                body={
                    "dataFilters": [
                        {"developerMetadataLookup": {"metadataKey": "responseId", "metadataValue": value}}
                    ]
                },
            )
            .execute()
            .get("matchedDeveloperMetadata", [])
        )
        if not found:
            return None
        return found[0]["developerMetadata"]["location"]["dimensionRange"]["startIndex"]

    # values.update, values.append (OVERWRITE and INSERT_ROWS), values.get, values.batchGet.
    r = api.values().update(
        spreadsheetId=sid,
        range="Responses!A1",
        valueInputOption="RAW",
        body={"values": [["Response ID", "Name"], ["r1", "Ann"], ["r2", "Bob"]]},
    ).execute()
    check("values.update updatedCells", r.get("updatedCells"), 6)
    r = api.values().append(
        spreadsheetId=sid,
        range="Responses!A1:B1",
        valueInputOption="RAW",
        insertDataOption="OVERWRITE",
        body={"values": [["r3", "Cy"]]},
    ).execute()
    check("values.append updatedRange", r["updates"]["updatedRange"], "Responses!A4:B4")
    check("values.append tableRange", r.get("tableRange"), "Responses!A1:B3")
    r = api.values().append(
        spreadsheetId=sid,
        range="Responses!A1",
        valueInputOption="RAW",
        insertDataOption="INSERT_ROWS",
        body={"values": [["r4", "Di"]]},
    ).execute()
    check("values.append INSERT_ROWS", r["updates"]["updatedRange"], "Responses!A5:B5")
    check(
        "values.get",
        values("Responses!A1:B9"),
        [["Response ID", "Name"], ["r1", "Ann"], ["r2", "Bob"], ["r3", "Cy"], ["r4", "Di"]],
    )
    got = api.values().batchGet(spreadsheetId=sid, ranges=["Responses!A2:A3", "Responses!B5"]).execute()
    check("values.batchGet", [v.get("values") for v in got["valueRanges"]], [[["r1"], ["r2"]], [["Di"]]])

    # Developer metadata on each response's row.
    batch([row_tag(i, f"r{i}") for i in range(1, 5)])
    check("metadata created", [where(f"r{i}") for i in range(1, 5)], [1, 2, 3, 4])

    # A person sorts by name, descending: rows and their metadata move together.
    batch(
        [
            {
                "sortRange": {
                    "range": {"sheetId": 0, "startRowIndex": 1, "endRowIndex": 5},
                    "sortSpecs": [{"dimensionIndex": 1, "sortOrder": "DESCENDING"}],
                }
            }
        ]
    )
    check("sortRange values", values("Responses!A2:B5"), [["r4", "Di"], ["r3", "Cy"], ["r2", "Bob"], ["r1", "Ann"]])
    check("sortRange metadata", [where(f"r{i}") for i in range(1, 5)], [4, 3, 2, 1])

    # Inserts two rows above, deletes r3's row, moves r1's row to the top of the data.
    batch([{"insertDimension": {"range": rows(1, 3), "inheritFromBefore": False}}])
    check("insertDimension metadata", [where(f"r{i}") for i in range(1, 5)], [6, 5, 4, 3])
    batch([{"deleteDimension": {"range": rows(4, 5)}}])
    check("deleteDimension metadata", [where(f"r{i}") for i in range(1, 5)], [5, 4, None, 3])
    batch([{"moveDimension": {"source": rows(5, 6), "destinationIndex": 1}}])
    check("moveDimension metadata", [where(f"r{i}") for i in range(1, 5)], [1, 5, None, 4])
    check("moveDimension values", values("Responses!A2:A6"), [["r1"], [], [], ["r4"], ["r2"]])

    # Read and write a response's row by its metadata.
    lookup = {"developerMetadataLookup": {"metadataKey": "responseId", "metadataValue": "r2"}}
    got = api.values().batchGetByDataFilter(spreadsheetId=sid, body={"dataFilters": [lookup]}).execute()
    check("batchGetByDataFilter", got["valueRanges"][0]["valueRange"].get("values"), [["r2", "Bob"]])
    got = api.values().batchUpdateByDataFilter(
        spreadsheetId=sid,
        body={"valueInputOption": "RAW", "data": [{"dataFilter": lookup, "values": [["r2", "Bob v2"]]}]},
    ).execute()
    check("batchUpdateByDataFilter", got.get("totalUpdatedCells"), 2)
    check("batchUpdateByDataFilter values", values("Responses!B6"), [["Bob v2"]])
    mid = (
        api.developerMetadata()
        .search(spreadsheetId=sid, body={"dataFilters": [lookup]})
        .execute()["matchedDeveloperMetadata"][0]["developerMetadata"]["metadataId"]
    )
    got = api.developerMetadata().get(spreadsheetId=sid, metadataId=mid).execute()
    check("developerMetadata.get", got.get("metadataValue"), "r2")

    # A person renames the tab and trims the grid; fields masks.
    batch(
        [
            {"updateSheetProperties": {"properties": {"sheetId": 0, "title": "Form answers"}, "fields": "title"}},
            {
                "updateSheetProperties": {
                    "properties": {"sheetId": 0, "gridProperties": {"rowCount": 6, "columnCount": 3}},
                    "fields": "gridProperties.rowCount,gridProperties.columnCount",
                }
            },
        ]
    )
    got = api.get(spreadsheetId=sid, fields="sheets(properties(sheetId,title,gridProperties))").execute()
    check(
        "fields mask",
        got,
        {"sheets": [{"properties": {"sheetId": 0, "title": "Form answers", "gridProperties": {"rowCount": 6, "columnCount": 3}}}]},
    )
    check("renamed tab values", values("'Form answers'!A2:A2"), [["r1"]])
    try:
        api.values().update(
            spreadsheetId=sid, range="'Form answers'!A7", valueInputOption="RAW", body={"values": [["x"]]}
        ).execute()
        check("write beyond a trimmed grid refused", "accepted", 400)
    except HttpError as e:
        check("write beyond a trimmed grid refused", e.resp.status, 400)

    # The connector protects its header row; the person cannot edit it.
    r = batch(
        [
            {
                "addProtectedRange": {
                    "protectedRange": {
                        "range": {"sheetId": 0, "startRowIndex": 0, "endRowIndex": 1},
                        "description": "header",
                    }
                }
            }
        ]
    )
    check("addProtectedRange editors", r["replies"][0]["addProtectedRange"]["protectedRange"]["editors"]["users"], [key["client_email"]])
    try:
        other.values().update(
            spreadsheetId=sid, range="'Form answers'!A1", valueInputOption="RAW", body={"values": [["mine"]]}
        ).execute()
        check("protected write refused", "accepted", 400)
    except HttpError as e:
        err = json.loads(e.content)["error"]
        check("protected write refused", (e.resp.status, err["status"], err["message"]), (400, "INVALID_ARGUMENT", PROTECTED))
    r = other.values().update(
        spreadsheetId=sid, range="'Form answers'!C2", valueInputOption="RAW", body={"values": [["a note"]]}
    ).execute()
    check("unprotected write by the person", r.get("updatedCells"), 1)

    # An unknown request kind is Google's 400.
    try:
        batch([{"frobnicate": {}}])
        check("unknown request refused", "accepted", 400)
    except HttpError as e:
        check("unknown request refused", e.resp.status, 400)


def start(binary):
    """Starts `collect emulate sheets` on a free port; returns the process and its base URL
    (from its "listening" log line, within 30 s)."""
    proc = subprocess.Popen(
        [binary, "emulate", "sheets", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"http://127\.0\.0\.1:[0-9]+", line)
        if found and "listening" in line:
            # Keep reading its log so that a full pipe never blocks it.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, found.group(0)
    proc.kill()
    raise RuntimeError("the Sheets emulator did not start")


def main():
    args = sys.argv[1:]
    if not (len(args) == 1 and args[0].startswith("http")) and not (len(args) == 2 and args[0] == "--start"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    proc = None
    try:
        if args[0] == "--start":
            proc, base = start(args[1])
        else:
            base = args[0].rstrip("/")
        run(base)
    except Exception:
        traceback.print_exc()
        failed.append("unexpected error")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"{passed} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
