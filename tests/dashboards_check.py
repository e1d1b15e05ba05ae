#!/usr/bin/env python3
"""Every metric the dashboards and the alert rules query is one the services export.

Reads every PromQL expression of deploy/grafana/dashboards/*.json (panel targets and
template-variable queries) and of deploy/prometheus/alerts.yml, takes the metric names out
of them, and checks each against the metrics that the given sources expose: `/metrics` URLs
of running processes (the forms API, `collect cdc`, `collect connect`) or files holding
such a page in the Prometheus text format. A name ending in `_bucket`, `_sum` or `_count`
counts when its base name is exported as a histogram (or summary); a histogram's bare
family name, which selects no series, is refused. Exits 1 listing each name that no source
exports, with the file and the panel or alert that uses it. There is no allow list: a
dashboard names only what the code exports.

  dashboards_check.py http://127.0.0.1:18080/metrics http://127.0.0.1:19464/metrics \\
                      http://127.0.0.1:18082/metrics
  dashboards_check.py --list          # the names each file uses, no check
  dashboards_check.py --structure     # the dashboards' and provisioning files' shape
  dashboards_check.py --self-test     # the PromQL name extraction against known cases

Only the standard library is needed (PyYAML is used when present, else a small reader of
the rules' `expr:` fields).
"""

import argparse
import glob
import json
import os
import re
import sys
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARDS = "deploy/grafana/dashboards"
RULES = "deploy/prometheus/alerts.yml"
PROVISIONING = "deploy/grafana/provisioning"

# Words PromQL reserves: never metric names, whatever follows them.
KEYWORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "atan2", "offset", "start", "end", "inf", "nan",
}
# Keywords followed by a parenthesised list of label names.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's variables: ${name}, ${name:format}, $name, [[name]]. Replaced by a duration,
# which is what they stand for in a range and is never taken for a name elsewhere.
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]\w*|\[\[\w+\]\]")
IDENT_START = re.compile(r"[A-Za-z_:]")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


class PromQLError(ValueError):
    """An expression that cannot be read."""


def _skip_string(text, i):
    """Index just after the string literal that starts at `i`."""
    quote = text[i]
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and quote != "`":
            i += 2
            continue
        if c == quote:
            return i + 1
        i += 1
    raise PromQLError("unterminated string")


def _read_string(text, i):
    """(value, end) of the string literal at `i` (escapes kept as written)."""
    end = _skip_string(text, i)
    return text[i + 1:end - 1], end


def _skip_space(text, i):
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _matchers(text, i):
    """Reads the label matchers `{...}` starting at `i`: (the `__name__` it pins, end)."""
    i += 1
    name = None
    while True:
        i = _skip_space(text, i)
        if i >= len(text):
            raise PromQLError("unclosed '{'")
        c = text[i]
        if c == "}":
            return name, i + 1
        if c == ",":
            i += 1
            continue
        if c in "\"'`":
            # A quoted metric name alone (Prometheus 3: {"my.metric"}), or a quoted label.
            value, i = _read_string(text, i)
            j = _skip_space(text, i)
            if j < len(text) and text[j] in ",}":
                name = value
            continue
        m = IDENT.match(text, i)
        if not m:
            raise PromQLError(f"unexpected {c!r} in label matchers")
        label = m.group(0)
        i = _skip_space(text, m.end())
        op = re.compile(r"=~|!~|!=|=").match(text, i)
        if not op:
            raise PromQLError(f"label {label} has no operator")
        i = _skip_space(text, op.end())
        if i >= len(text) or text[i] not in "\"'`":
            raise PromQLError(f"label {label} has no quoted value")
        value, i = _read_string(text, i)
        if label == "__name__" and op.group(0) == "=":
            name = value


def metric_names(expr):
    """The metric names an expression selects, in order of first use."""
    text = GRAFANA_VARIABLE.sub("5m", expr)
    names = []

    def add(n):
        if n not in names:
            names.append(n)

    i, depth = 0, 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        elif c in "\"'`":
            i = _skip_string(text, i)
        elif c == "{":
            name, i = _matchers(text, i)
            if name:
                add(name)
        elif c == "[":
            end = text.find("]", i)
            if end < 0:
                raise PromQLError("unclosed '['")
            i = end + 1
        elif c.isdigit() or (c == "." and i + 1 < len(text) and text[i + 1].isdigit()):
            # Numbers and durations: 0.99, 1e3, 0x1f, 5m, 1h30m.
            while i < len(text) and (text[i].isalnum() or text[i] in "._"):
                i += 1
        elif IDENT_START.match(c):
            m = IDENT.match(text, i)
            word = m.group(0)
            i = m.end()
            after = _skip_space(text, i)
            opens = after < len(text) and text[after] == "("
            if word in LABEL_LISTS and opens:
                end = text.find(")", after)
                if end < 0:
                    raise PromQLError(f"unclosed label list after {word}")
                i = end + 1
            elif word.lower() in KEYWORDS or opens:
                continue  # an operator, or a function call
            else:
                add(word)
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise PromQLError("unbalanced ')'")
            i += 1
        else:
            i += 1  # operators, commas, '@'
    if depth != 0:
        raise PromQLError("unbalanced '('")
    return names


def _split_top_level(args):
    """Splits a function's argument text on its top-level commas."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(args):
        c = args[i]
        if c in "\"'`":
            i = _skip_string(args, i)
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(args[start:i])
            start = i + 1
        i += 1
    parts.append(args[start:])
    return [p.strip() for p in parts]


def variable_query_names(query):
    """Metric names of a Grafana Prometheus template-variable query."""
    q = query.strip()
    m = re.fullmatch(r"(label_values|query_result|metrics|label_names)\s*\((.*)\)", q, re.S)
    if not m:
        return metric_names(q) if q else []
    fn, args = m.group(1), m.group(2)
    if fn == "query_result":
        return metric_names(args)
    if fn == "label_values":
        parts = _split_top_level(args)
        return metric_names(parts[0]) if len(parts) > 1 else []
    return []  # metrics(regex) and label_names() name no metric


def dashboard_expressions(path):
    """(where, expression, kind) of every query of a dashboard file."""
    board = json.load(open(path))
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(board.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel '{p.get('title')}' ({t.get('refId')})", t["expr"], "promql"))
    for v in board.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if q:
            out.append((f"variable '{v.get('name')}'", q, "variable"))
    return out


def _rules_without_yaml(text):
    """(kind, name, expr) of each rule, for machines without PyYAML: reads `- alert:` or
    `- record:` and the `expr:` that follows (one line, or a `|`/`>` block)."""
    rules, current = [], None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-?\s*(alert|record):\s*(.+?)\s*$", line)
        if m:
            current = [m.group(1), m.group(2).strip("'\""), None]
            rules.append(current)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m and current is not None:
            value = m.group(2).strip()
            if value in ("|", ">", "|-", ">-"):
                indent = len(m.group(1))
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                current[2] = " ".join(block)
                continue
            if value[:1] in "'\"" and value[-1:] == value[:1]:
                value = value[1:-1]
            current[2] = value
        i += 1
    return [tuple(r) for r in rules if r[2]]


def rule_expressions(path):
    """(where, expression, kind) of every rule, and the names recording rules define."""
    text = open(path).read()
    try:
        import yaml  # noqa: PLC0415 (optional)
    except ImportError:
        rules = _rules_without_yaml(text)
    else:
        doc = yaml.safe_load(text) or {}
        rules = [("alert" if "alert" in r else "record", r.get("alert") or r.get("record"),
                  str(r["expr"]))
                 for g in doc.get("groups", []) for r in g.get("rules", [])]
    exprs = [(f"{kind} {name}", expr, "promql") for kind, name, expr in rules]
    recorded = {name for kind, name, _ in rules if kind == "record"}
    return exprs, recorded


def used_names(repo):
    """{name: [(file, where), ...]} over the dashboards and the rules, and the names that
    recording rules define."""
    used, recorded = {}, set()
    files = sorted(glob.glob(os.path.join(repo, DASHBOARDS, "*.json")))
    sources = [(f, dashboard_expressions(f)) for f in files]
    exprs, recorded = rule_expressions(os.path.join(repo, RULES))
    sources.append((os.path.join(repo, RULES), exprs))
    for f, items in sources:
        if not items:
            raise SystemExit(f"{os.path.relpath(f, repo)}: no expressions found")
        for where, expr, kind in items:
            try:
                names = variable_query_names(expr) if kind == "variable" else metric_names(expr)
            except PromQLError as e:
                raise SystemExit(f"{os.path.relpath(f, repo)}: {where}: {e}: {expr}")
            if not names and kind == "promql":
                raise SystemExit(f"{os.path.relpath(f, repo)}: {where} names no metric: {expr}")
            for n in names:
                used.setdefault(n, []).append((os.path.relpath(f, repo), where))
    return used, recorded


def read_source(src):
    if re.match(r"https?://", src):
        with urllib.request.urlopen(src, timeout=15) as r:
            return r.read().decode()
    return open(src).read()


def exported(text):
    """(sample names, {family: type}) of a page in the Prometheus text format."""
    samples, types = set(), {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        m = IDENT.match(line)
        if m:
            samples.add(m.group(0))
    return samples, types


def missing_names(used, recorded, samples, types):
    """The used names no source exports, each with the reason."""
    out = {}
    for name in used:
        if name in samples or name in recorded:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base and types.get(base) in ("histogram", "summary"):
            continue
        if types.get(name) == "histogram":
            out[name] = "a histogram's family name selects no series (use _bucket, _sum or _count)"
        else:
            out[name] = "not exported"
    return out


def check_structure(repo):
    """The dashboards and provisioning files are well formed; returns the problems."""
    problems, uids = [], {}
    files = sorted(glob.glob(os.path.join(repo, DASHBOARDS, "*.json")))
    if not files:
        problems.append(f"no dashboards in {DASHBOARDS}")
    for f in files:
        rel = os.path.relpath(f, repo)
        try:
            board = json.load(open(f))
        except ValueError as e:
            problems.append(f"{rel}: not JSON: {e}")
            continue
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in board:
                problems.append(f"{rel}: no '{key}'")
        if board.get("uid") in uids:
            problems.append(f"{rel}: uid {board['uid']} also in {uids[board['uid']]}")
        uids[board.get("uid")] = rel
        if "id" in board and board["id"] is not None:
            problems.append(f"{rel}: a provisioned dashboard carries no numeric 'id'")
        variables = {v.get("name") for v in board.get("templating", {}).get("list", [])}
        ids = set()
        for p in board.get("panels", []):
            title = p.get("title")
            if p.get("id") in ids:
                problems.append(f"{rel}: panel id {p.get('id')} used twice")
            ids.add(p.get("id"))
            g = p.get("gridPos", {})
            if not all(k in g for k in ("h", "w", "x", "y")) or g.get("x", 0) + g.get("w", 0) > 24:
                problems.append(f"{rel}: panel '{title}' has a bad gridPos {g}")
            if p.get("type") == "row":
                continue
            if not p.get("description"):
                problems.append(f"{rel}: panel '{title}' has no description")
            targets = p.get("targets", [])
            if not targets:
                problems.append(f"{rel}: panel '{title}' has no query")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs):
                problems.append(f"{rel}: panel '{title}' repeats a refId")
            for t in targets:
                if not t.get("expr", "").strip():
                    problems.append(f"{rel}: panel '{title}' has an empty query")
                for var in re.findall(r"\$\{?(\w+)", t.get("expr", "")):
                    if not var.startswith("__") and var not in variables:
                        problems.append(f"{rel}: panel '{title}' uses undefined ${var}")
            ds = p.get("datasource", {})
            if not isinstance(ds, dict) or ds.get("type") != "prometheus":
                problems.append(f"{rel}: panel '{title}' has no Prometheus datasource")
            elif ds.get("uid", "").startswith("$") and ds["uid"].strip("${}") not in variables:
                problems.append(f"{rel}: panel '{title}' uses undefined datasource variable")
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        yaml = None
    for f in sorted(glob.glob(os.path.join(repo, PROVISIONING, "*", "*.yaml"))):
        rel = os.path.relpath(f, repo)
        if yaml is None:
            continue
        doc = yaml.safe_load(open(f))
        if doc.get("apiVersion") != 1:
            problems.append(f"{rel}: apiVersion must be 1")
        if "datasources" in rel and not doc.get("datasources"):
            problems.append(f"{rel}: no datasources")
        if "dashboards" in rel and not any(
            p.get("options", {}).get("path") for p in doc.get("providers", [])
        ):
            problems.append(f"{rel}: no provider with a path")
    return problems, len(files)


SELF_TESTS = [
    ("rate(collect_a_total[5m])", ["collect_a_total"]),
    ('sum by (le, route) (rate(collect_h_bucket{route=~"$route", x="a}b"}[$__rate_interval]))',
     ["collect_h_bucket"]),
    ("histogram_quantile(0.99, sum without (instance) (rate(collect_h_bucket[1h30m])))",
     ["collect_h_bucket"]),
    ("max(collect_l) < 1 or absent(collect_l)", ["collect_l"]),
    ('a_total / on (job) group_left (version) b_info{job="x"} offset 5m', ["a_total", "b_info"]),
    ('{__name__="collect_by_name", job="j"} and bool collect_other', ["collect_by_name", "collect_other"]),
    ("sum(rate(x[5m])) by (kind) > 1e3", ["x"]),
    ("topk(5, count_values(\"v\", collect_build_info)) unless on() vector(0)", ["collect_build_info"]),
    ("deriv(collect_g[15m:1m]) > 0 # a comment naming not_a_metric", ["collect_g"]),
    ("${datasource_metric} + collect_x", ["collect_x"]),
    ('label_replace(up_total, "a", "$1", "b", "(.*)")', ["up_total"]),
]
VARIABLE_TESTS = [
    ("label_values(collect_connect_consumer_lag, integration)", ["collect_connect_consumer_lag"]),
    ('label_values(collect_lag{kind=~"$kind"}, integration)', ["collect_lag"]),
    ("label_values(integration)", []),
    ("query_result(max by (i) (collect_q))", ["collect_q"]),
    ("metrics(collect_.*)", []),
]
BAD = ["sum(rate(x[5m])", 'x{a="b}', "x{a}", "rate(x[5m]))"]


def self_test():
    failures = []
    for expr, want in SELF_TESTS:
        got = metric_names(expr)
        if got != want:
            failures.append(f"{expr!r}: got {got}, want {want}")
    for q, want in VARIABLE_TESTS:
        got = variable_query_names(q)
        if got != want:
            failures.append(f"variable {q!r}: got {got}, want {want}")
    for expr in BAD:
        try:
            metric_names(expr)
            failures.append(f"{expr!r} was read without an error")
        except PromQLError:
            pass
    samples, types = exported(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n# TYPE c counter\nc 3\n"
    )
    got = missing_names({"h_bucket": [], "h_count": [], "h": [], "c": [], "d": []}, set(),
                        samples, types)
    if sorted(got) != ["d", "h"]:
        failures.append(f"exposition check: got {sorted(got)}, want ['d', 'h']")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", help="/metrics URLs or files in the text format")
    ap.add_argument("--repo", default=REPO, help="repository root (default: this checkout)")
    ap.add_argument("--list", action="store_true", help="print the names each file uses")
    ap.add_argument("--structure", action="store_true", help="check the dashboards' shape")
    ap.add_argument("--self-test", action="store_true", help="test the name extraction")
    a = ap.parse_args()
    if not (a.sources or a.list or a.structure or a.self_test):
        ap.error("give /metrics sources, or --list, --structure or --self-test")
    status = 0
    if a.self_test:
        failures = self_test()
        for f in failures:
            print(f"self-test FAILED: {f}")
        cases = len(SELF_TESTS) + len(VARIABLE_TESTS) + len(BAD) + 1
        print(f"self-test: {cases - len(failures)} passed, {len(failures)} failed")
        status |= bool(failures)
    if a.structure:
        problems, count = check_structure(a.repo)
        for p in problems:
            print(f"structure: {p}")
        print(f"structure: {count} dashboards, {len(problems)} problems")
        status |= bool(problems)
    used, recorded = used_names(a.repo)
    if a.list:
        by_file = {}
        for name, places in used.items():
            for f, _ in places:
                by_file.setdefault(f, set()).add(name)
        for f in sorted(by_file):
            print(f"{f}: {len(by_file[f])} metrics")
            for n in sorted(by_file[f]):
                print(f"  {n}")
    if a.sources:
        samples, types = set(), {}
        for src in a.sources:
            try:
                s, t = exported(read_source(src))
            except OSError as e:
                print(f"cannot read {src}: {e}")
                return 1
            if not s and not t:
                print(f"{src} exports no metric")
                return 1
            samples |= s
            types.update(t)
        missing = missing_names(used, recorded, samples, types)
        for name in sorted(missing):
            print(f"MISSING {name}: {missing[name]}")
            for f, where in used[name]:
                print(f"    used by {f}: {where}")
        print(f"metric names: {len(used) - len(missing)} exported, {len(missing)} missing "
              f"(from {len(a.sources)} sources, {len(samples)} series names)")
        status |= bool(missing)
    return status


if __name__ == "__main__":
    sys.exit(main())
