"""The dashboard's HTML: pure functions from what the app hands them to a page.

Every string that came over the wire is hostile (tracebacks, script and host names, package names
and versions, environment variables), so nothing reaches the page but through ``_h`` (text and
attribute values) or ``_url`` (query strings we build). No inline script or style: the page loads
/static/app.css and /static/app.js from this server only, so the Content-Security-Policy can forbid
everything else; charts are inline SVG whose numbers are computed here. The pages work without
JavaScript; app.js only submits the filter form when a select changes.
"""

from __future__ import annotations

import html
import math
import time
from datetime import datetime, timezone
from typing import Iterable, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode

ABSENT = "<absent>"
_DIFF_SHOWN = 12  # rows of an observed fix's diff on the group page (the diff page has them all)

###############################################################################
# Escaping and small pieces ###################################################
###############################################################################


def _h(value: object) -> str:
    """Text or attribute value: everything that could open a tag, an entity or leave a quote is escaped."""
    return html.escape("" if value is None else str(value), quote=True)


def _url(path: str, params: Optional[Mapping[str, object]] = None) -> str:
    """A same-origin link: a fixed path and quoted query parameters, escaped for an attribute."""
    query = urlencode([(k, str(v)) for k, v in (params or {}).items() if v not in (None, "")])
    return _h(path + ("?" + query if query else ""))


def group_url(group_id: int) -> str:
    return "/group/%d" % int(group_id)


def env_url(env_hash: str) -> str:
    return "/env/" + quote(env_hash, safe="")


def iso(ts: Optional[float]) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def relative(ts: Optional[float], now: float) -> str:
    if ts is None:
        return "never"
    delta = now - ts
    if delta < 0:
        return "just now"
    for size, unit in ((86400 * 365, "y"), (86400 * 30, "mo"), (86400, "d"), (3600, "h"), (60, "min")):
        if delta >= size:
            return "%d %s ago" % (delta // size, unit)
    return "%d s ago" % delta


def _when(ts: Optional[float], now: float) -> str:
    """Relative time, the absolute UTC time on hover and for machines."""
    if ts is None:
        return '<span class="muted">never</span>'
    return '<time datetime="%s" title="%s">%s</time>' % (
        _h(iso(ts)),
        _h(iso(ts).replace("T", " ")),
        _h(relative(ts, now)),
    )


def _short(text: Optional[str], limit: int = 160) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def exception_type(signature: str) -> str:
    """The exception's name: what stands before the first colon of the signature's first line."""
    head = (signature or "").split("\n", 1)[0].split(" @ ", 1)[0]
    name = head.split(":", 1)[0].strip()
    return name if name and " " not in name and len(name) <= 80 else "?"


def _percent(p: Optional[float]) -> str:
    return "" if p is None else "%d%%" % round(100 * p)


def _handled(group: dict) -> str:
    """Logged or captured errors, not uncaught ones: all of the group's, or how many."""
    handled = group.get("handled") or 0
    if not handled:
        return ""
    return ' <span class="handled">%s</span>' % ("handled" if handled >= group["count"] else "%d handled" % handled)


def _status_badge(status: str) -> str:
    return '<span class="status status-%s">%s</span>' % (_h(status), _h(status))


def _value_label(value: str) -> str:
    return "(none)" if value == ABSENT else value


def _feature_label(feature: str) -> str:
    kind, _, name = feature.partition(":")
    if kind == "pkg":
        return "package " + name
    if kind == "env":
        return "variable " + name
    return {
        "python": "Python",
        "python_full": "Python (full)",
        "impl": "implementation",
        "os": "OS",
        "arch": "architecture",
    }.get(feature, feature)


###############################################################################
# Charts (inline SVG) #########################################################
###############################################################################


def sparkline(counts: Sequence[int], width: int = 112, height: int = 22) -> str:
    """Bars of daily failing runs; the day's number in each bar's tooltip."""
    top = max(counts) if counts and max(counts) > 0 else 1
    step = width / max(len(counts), 1)
    bars = []
    for i, count in enumerate(counts):
        h = 0 if count == 0 else max(1.5, (height - 2) * count / top)
        bars.append(
            '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%d</title></rect>'
            % (i * step + 0.5, height - h, max(step - 1, 1), h, count)
        )
    return (
        '<svg class="spark" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="failures per day, '
        'last %d days">%s<line x1="0" y1="%d" x2="%d" y2="%d" class="axis"/></svg>'
        % (width, height, width, height, len(counts), "".join(bars), height - 0.5, width, height - 0.5)
    )


def time_chart(days: Sequence[Tuple[str, int, int]], width: int = 640, height: int = 120) -> str:
    """Failing and succeeding runs per day as paired bars; ``days`` = [(date, failing, succeeding)]."""
    top = max([max(f, s) for _, f, s in days] + [1])
    step = (width - 30) / max(len(days), 1)
    bar = max((step - 2) / 2, 1)
    parts = ['<text x="0" y="10" class="tick">%d</text>' % top]
    for i, (day, fails, oks) in enumerate(days):
        x = 30 + i * step
        for offset, count, cls in ((0, fails, "fail"), (bar, oks, "ok")):
            h = 0 if count == 0 else max(1.5, (height - 20) * count / top)
            parts.append(
                '<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s: %d %s</title>'
                '</rect>'
                % (
                    cls,
                    x + offset,
                    height - 16 - h,
                    bar,
                    h,
                    _h(day),
                    count,
                    "failing" if cls == "fail" else "succeeding",
                )
            )
        if i % 7 == 0 or (i == len(days) - 1 and i % 7 > 3):
            parts.append('<text x="%.1f" y="%d" class="tick">%s</text>' % (x, height - 3, _h(day[5:])))
    return (
        '<svg class="chart" width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
        'aria-label="failing and succeeding runs per day">%s<line x1="30" y1="%d" x2="%d" y2="%d" class="axis"/>'
        '</svg>' % (width, height, width, height, "".join(parts), height - 16, width, height - 16)
    )


def paired_bars(runs: Mapping[str, Mapping[str, int]], fails: int, oks: int, width: int = 420) -> str:
    """For each value: its share of the failing runs above its share of the succeeding runs."""
    rows = sorted(runs.items(), key=lambda kv: (-(kv[1]["failing"] + kv[1]["succeeding"]), kv[0]))[:8]
    label_w, bar_w, row_h = 150, width - 150 - 60, 26
    parts = []
    for i, (value, counts) in enumerate(rows):
        y = i * row_h
        parts.append('<text x="0" y="%d" class="label">%s</text>' % (y + 15, _h(_short(_value_label(value), 24))))
        for j, (count, total, cls) in enumerate(
            ((counts["failing"], fails, "fail"), (counts["succeeding"], oks, "ok"))
        ):
            share = count / total if total else 0.0
            parts.append(
                '<rect class="%s" x="%d" y="%d" width="%.1f" height="10"><title>%s: %d of %d %s runs'
                '</title></rect><text x="%.1f" y="%d" class="num">%s</text>'
                % (
                    cls,
                    label_w,
                    y + 3 + j * 11,
                    max(share * bar_w, 0.5),
                    _h(_value_label(value)),
                    count,
                    total,
                    "failing" if cls == "fail" else "succeeding",
                    label_w + share * bar_w + 4,
                    y + 12 + j * 11,
                    _percent(share),
                )
            )
    height = max(len(rows), 1) * row_h
    return (
        '<svg class="bars" width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
        'aria-label="share of failing and succeeding runs per value">%s</svg>'
        % (width, height, width, height, "".join(parts))
    )


###############################################################################
# Layout ######################################################################
###############################################################################

_NAV = (("/", "Errors"), ("/fleet", "Fleet"))


def layout(title: str, body: str, *, active: str = "") -> str:
    nav = "".join(
        '<a href="%s"%s>%s</a>' % (path, ' class="active"' if path == active else "", label) for path, label in _NAV
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        '<title>%s \u2014 corp-error-server</title><link rel="stylesheet" href="/static/app.css">'
        '<script src="/static/app.js" defer></script></head>'
        '<body><header><span class="brand">corp-error-server</span><nav>%s</nav></header>'
        '<main>%s</main></body></html>\n' % (_h(title), nav, body)
    )


def error_page(status: int, message: str) -> str:
    return layout(
        "Error %d" % status,
        '<h1>Error %d</h1><p>%s</p><p><a href="/">Back to the error list</a></p>' % (status, _h(message)),
    )


def login_page(next_path: str, wrong: bool) -> str:
    return layout(
        "Sign in",
        (
            '<h1>Sign in</h1><p>This server requires its token. It is asked once; the browser then keeps a session '
            'cookie (HttpOnly, SameSite=Strict).</p>%s'
            '<form method="post" action="/login" class="login"><input type="hidden" name="next" value="%s">'
            '<label>Token <input type="password" name="token" autocomplete="current-password" required autofocus>'
            '</label> <button type="submit">Sign in</button></form>'
            % ('<p class="warn" role="alert">Wrong token.</p>' if wrong else "", _h(next_path))
        ),
    )


def _triage_form(group_id: int, csrf: str, status: str) -> str:
    actions = (
        [("resolve", "Resolve"), ("ignore", "Ignore")] if status in ("new", "regressed") else [("reopen", "Reopen")]
    )
    buttons = "".join(
        '<button type="submit" name="action" value="%s">%s</button> ' % (a, label) for a, label in actions
    )
    return (
        '<form method="post" action="%s/status" class="triage"><input type="hidden" name="csrf" value="%s">'
        '%s</form>' % (group_url(group_id), _h(csrf), buttons)
    )


###############################################################################
# The error groups ############################################################
###############################################################################


def _filters(params: Mapping[str, str], statuses: Sequence[str], sorts: Sequence[str]) -> str:
    def select(name: str, options: Iterable[Tuple[str, str]]) -> str:
        return '<select name="%s">%s</select>' % (
            name,
            "".join(
                '<option value="%s"%s>%s</option>' % (_h(v), " selected" if params.get(name, "") == v else "", _h(t))
                for v, t in options
            ),
        )

    def field(name: str, label: str, placeholder: str) -> str:
        return '<label>%s <input type="search" name="%s" value="%s" placeholder="%s"></label>' % (
            label,
            name,
            _h(params.get(name, "")),
            _h(placeholder),
        )

    return (
        '<form method="get" action="/" class="filters" role="search">%s<label>Status %s</label>%s%s%s'
        '<label>Sort %s</label><button type="submit">Apply</button> <a href="/">Reset</a></form>'
        % (
            field("q", "Search", "signature or text"),
            select("status", [("", "any")] + [(s, s) for s in statuses]),
            field("script", "Script id", "script id"),
            field("package", "Package", "name==version"),
            field("python", "Python", "3.11"),
            select("sort", [(s, s.replace("_", " ")) for s in sorts]),
        )
    )


def _pager(params: Mapping[str, str], total: int, limit: int, offset: int) -> str:
    if total <= limit:
        return ""
    links = []
    if offset > 0:
        links.append(
            '<a href="%s" rel="prev">\u2190 newer</a>' % _url("/", dict(params, offset=max(offset - limit, 0)))
        )
    page, pages = offset // limit + 1, math.ceil(total / limit)
    links.append("page %d of %d" % (page, pages))
    if offset + limit < total:
        links.append('<a href="%s" rel="next">older \u2192</a>' % _url("/", dict(params, offset=offset + limit)))
    return '<nav class="pager">%s</nav>' % " ".join(links)


def groups_page(
    groups: Sequence[dict],
    total: int,
    params: Mapping[str, str],
    limit: int,
    offset: int,
    statuses: Sequence[str],
    sorts: Sequence[str],
    now: float,
) -> str:
    """The list: one row per group with its counts, sparkline, status and suggestion."""
    rows = []
    for g in groups:
        s = g.get("suggestion") or {}
        suggestion = (
            '<code>%s</code> <span class="conf" title="confidence">%s</span>'
            % (_h(s["solution"]), _percent(s.get("confidence")))
            if s.get("match")
            else '<span class="muted">none yet</span>'
        )
        scripts = ", ".join('<span class="script">%s</span>' % _h(_short(n, 40)) for n in g["script_names"][:3])
        if g["scripts"] > 3:
            scripts += " +%d" % (g["scripts"] - 3)
        rows.append(
            '<tr><td class="sig"><a href="%s">%s</a><div class="type">%s%s</div></td><td>%s</td>'
            '<td class="n">%d</td><td class="n">%d / %d</td><td>%s</td><td class="n">%d</td><td>%s</td><td>%s</td>'
            '<td>%s</td><td>%s</td></tr>'
            % (
                group_url(g["id"]),
                _h(_short(g["signature"], 140)),
                _h(exception_type(g["signature"])),
                _handled(g),
                _status_badge(g["status"]),
                g["count"],
                g["failing_runs"],
                g["succeeding_runs"],
                scripts,
                g["envs_affected"],
                _when(g["first_seen"], now),
                _when(g["last_seen"], now),
                sparkline(g["daily"]),
                suggestion,
            )
        )
    table = (
        '<table class="groups"><thead><tr><th>Error</th><th>Status</th><th title="error beacons">Events</th>'
        '<th title="failing / succeeding runs the engine counted">Runs fail/ok</th><th>Scripts</th>'
        '<th title="environments affected">Envs</th><th>First seen</th><th>Last seen</th><th>14 days</th>'
        '<th>Suggested fix</th></tr></thead><tbody>%s</tbody></table>' % "".join(rows)
        if rows
        else '<p class="empty">No error groups match.</p>'
    )
    return layout(
        "Errors",
        '<h1>Error groups <span class="muted">(%d)</span></h1>%s%s%s'
        % (total, _filters(params, statuses, sorts), table, _pager(params, total, limit, offset)),
        active="/",
    )


###############################################################################
# One group ###################################################################
###############################################################################


def _evidence_words(suggestion: dict) -> str:
    if not suggestion.get("match"):
        return '<p class="muted">No suggestion: %s.</p>' % _h(suggestion.get("reason", "not enough evidence"))
    ev = suggestion.get("evidence") or {}
    items = []
    for c in ev.get("candidates", []):
        runs = c.get("runs", {})
        current, target = str(c.get("current", ABSENT)), str(c.get("suggested", ABSENT))
        cur, sug = runs.get(current, {}), runs.get(target, {})
        words = "%s is %s here; %d of %d runs with it failed" % (
            _feature_label(str(c.get("feature", "?"))),
            _value_label(current),
            cur.get("failing", 0),
            cur.get("failing", 0) + cur.get("succeeding", 0),
        )
        words += "; with %s, %d of %d runs succeeded" % (
            _value_label(target),
            sug.get("succeeding", 0),
            sug.get("failing", 0) + sug.get("succeeding", 0),
        )
        if c.get("fixes"):
            words += "; %d observed fix%s moved it there" % (c["fixes"], "" if c["fixes"] == 1 else "es")
        if c.get("named_in_trace"):
            words += "; the traceback names it"
        items.append("<li>%s (confidence %s).</li>" % (_h(words), _percent(c.get("confidence"))))
    docs = suggestion.get("docs") or ""
    docs_link = (
        ' <a href="%s" rel="noreferrer noopener">release page</a>' % _h(docs)
        if docs.startswith("https://pypi.org/")
        else ""
    )
    return (
        '<div class="hint"><p><strong>%s</strong></p><p>Fix: <code class="fix">%s</code> '
        '<span class="conf">confidence %s</span>%s</p><p class="muted">From %d failing and %d succeeding runs '
        'and %d observed fix(es):</p><ul>%s</ul></div>'
        % (
            _h(suggestion.get("hint", "")),
            _h(suggestion.get("solution", "")),
            _percent(suggestion.get("confidence")),
            docs_link,
            ev.get("failing_runs", 0),
            ev.get("succeeding_runs", 0),
            ev.get("observed_fixes", 0),
            "".join(items),
        )
    )


def _diff_rows(diff: Sequence[Tuple[str, str, str]]) -> str:
    return "".join(
        '<tr><td>%s</td><td class="before">%s</td><td class="after">%s</td></tr>'
        % (_h(_feature_label(f)), _h(_value_label(a)), _h(_value_label(b)))
        for f, a, b in diff
    )


def _fixes(fixes: Sequence[dict], now: float) -> str:
    if not fixes:
        return '<p class="muted">No observed fix yet: no run of a script that failed here succeeded elsewhere.</p>'
    items = []
    for fix in fixes:
        items.append(
            '<li><p>%s: <a href="%s">%s</a> \u2192 <a href="%s">%s</a> (%s%s) <a href="%s">full diff</a></p>'
            '<table class="diff"><thead><tr><th>what</th><th>failing</th><th>succeeding</th></tr></thead>'
            '<tbody>%s</tbody></table></li>'
            % (
                _when(fix["received"], now),
                env_url(fix["failing_env"]),
                _h(fix["failing_env"]),
                env_url(fix["fixed_env"]),
                _h(fix["fixed_env"]),
                _h(fix.get("script_name") or fix["script_id"]),
                (" on " + _h(fix["host"])) if fix.get("host") else "",
                _url("/diff", {"a": fix["failing_env"], "b": fix["fixed_env"]}),
                _diff_rows(fix["diff"][:_DIFF_SHOWN])
                + (
                    '<tr><td colspan="3" class="muted">and %d more</td></tr>' % (len(fix["diff"]) - _DIFF_SHOWN)
                    if len(fix["diff"]) > _DIFF_SHOWN
                    else ""
                )
                or '<tr><td colspan="3">no recorded difference</td></tr>',
            )
        )
    return '<ol class="fixes">%s</ol>' % "".join(items)


def _comparison(comparison: Sequence[dict], fails: int, oks: int) -> str:
    if not comparison:
        return (
            '<p class="muted">Nothing to compare yet: the group needs failing and succeeding runs with '
            'known environments.</p>'
        )
    varying = [c for c in comparison if len(c["runs"]) > 1]
    same = [c for c in comparison if len(c["runs"]) <= 1]
    blocks = [
        '<figure class="feature"><figcaption>%s <span class="muted">separation %.2f</span></figcaption>%s'
        '</figure>' % (_h(_feature_label(c["feature"])), c["score"], paired_bars(c["runs"], fails, oks))
        for c in varying
    ]
    constant = (
        '<p class="muted">The same in every run: %s.</p>'
        % _h(", ".join("%s %s" % (_feature_label(c["feature"]), _value_label(next(iter(c["runs"])))) for c in same))
        if same
        else ""
    )
    return (
        '<p class="legend"><span class="key fail"></span> share of failing runs '
        '<span class="key ok"></span> share of succeeding runs</p><div class="features">%s</div>%s'
        % ("".join(blocks), constant)
    )


def _traces(recent: Sequence[dict], now: float) -> str:
    if not recent:
        return '<p class="muted">No traces kept.</p>'
    return "".join(
        '<details%s><summary>%s \u2014 %s%s%s in <a href="%s">%s</a></summary><pre>%s</pre></details>'
        % (
            " open" if i == 0 else "",
            _when(r["received"], now),
            _h(r.get("script_name") or r["script_id"]),
            " (handled)" if r.get("handled") else "",
            (" on " + _h(r["host"])) if r.get("host") else "",
            env_url(r["env_hash"]),
            _h(r["env_hash"]),
            _h(r.get("trace") or r.get("error_sig") or "(no trace)"),
        )
        for i, r in enumerate(recent)
    )


def _hosts(row: dict) -> str:
    if not row["hosts"]:
        return ""
    return _h(_short(row["host"], 60)) + (" +%d" % (row["hosts"] - 1) if row["hosts"] > 1 else "")


def _sources(
    scripts: Sequence[dict], envs: Sequence[dict], snapshots: Mapping[str, dict], total_envs: int, now: float
) -> str:
    script_rows = "".join(
        '<tr><td><a href="%s">%s</a></td><td>%s</td><td class="n">%d</td><td class="n">%d</td><td>%s</td></tr>'
        % (
            _url("/", {"script": s["script_id"]}),
            _h(s["script_name"] or s["script_id"]),
            _hosts(s),
            s["failing"],
            s["succeeding"],
            _when(s["last_seen"], now),
        )
        for s in scripts
    )
    env_rows = []
    for e in envs:
        snap = snapshots.get(e["env_hash"]) or {}
        env_rows.append(
            '<tr><td><a href="%s">%s</a></td><td>%s</td><td>%s</td><td>%s</td><td class="n">%d</td>'
            '<td class="n">%d</td><td>%s</td></tr>'
            % (
                env_url(e["env_hash"]),
                _h(e["env_hash"]),
                _h(snap.get("python_ver", "?")),
                _h(_short(snap.get("os_info", "?"), 40)),
                _hosts(e),
                e["failing"],
                e["succeeding"],
                _when(e["last_seen"], now),
            )
        )
    more = (
        '<p class="muted">The %d latest of %d failing environments.</p>' % (len(envs), total_envs)
        if total_envs > len(envs)
        else ""
    )
    return (
        '<h3>Scripts</h3><table><thead><tr><th>script</th><th>hosts</th><th>failing</th><th>succeeding</th>'
        '<th>last</th></tr></thead><tbody>%s</tbody></table><h3>Environments</h3><table><thead><tr><th>env</th>'
        '<th>Python</th><th>OS</th><th>hosts</th><th>failing</th><th>succeeding</th><th>last</th></tr></thead>'
        '<tbody>%s</tbody></table>%s' % (script_rows, "".join(env_rows), more)
    )


def group_page(
    group: dict,
    suggestion: dict,
    comparison: Sequence[dict],
    fixes: Sequence[dict],
    days: Sequence[Tuple[str, int, int]],
    recent: Sequence[dict],
    scripts: Sequence[dict],
    envs: Sequence[dict],
    snapshots: Mapping[str, dict],
    csrf: str,
    now: float,
) -> str:
    head = (
        '<h1 class="sig">%s</h1><p>%s %s%s \u00b7 %d event(s) \u00b7 %d failing / %d succeeding runs \u00b7 '
        'first seen %s \u00b7 last seen %s</p>%s'
        % (
            _h(group["signature"]),
            _status_badge(group["status"]),
            _h(exception_type(group["signature"])),
            _handled(group),
            group["count"],
            group["failing_runs"],
            group["succeeding_runs"],
            _when(group["first_seen"], now),
            _when(group["last_seen"], now),
            _triage_form(group["id"], csrf, group["status"]),
        )
    )
    body = (
        head + '<section><h2>Suggestion</h2>%s</section>'
        '<section><h2>Observed fixes</h2>%s</section>'
        '<section><h2>Failing vs succeeding runs</h2>%s</section>'
        '<section><h2>Over time</h2>%s</section>'
        '<section><h2>Recent traces</h2>%s</section>'
        '<section><h2>Where it happens</h2>%s</section>'
        % (
            _evidence_words(suggestion),
            _fixes(fixes, now),
            _comparison(comparison, group["failing_runs"], group["succeeding_runs"]),
            time_chart(days),
            _traces(recent, now),
            _sources(scripts, envs, snapshots, group["envs_affected"], now),
        )
    )
    return layout(_short(group["signature"], 60), body, active="/")


###############################################################################
# Environments and the fleet ##################################################
###############################################################################


def _kv_table(rows: Iterable[Tuple[str, object]]) -> str:
    return '<table class="kv"><tbody>%s</tbody></table>' % "".join(
        "<tr><th>%s</th><td>%s</td></tr>" % (_h(k), _h(v)) for k, v in rows
    )


def environment_page(env: dict, now: float) -> str:
    snap = env["snapshot"]
    facts = _kv_table(
        [
            ("env hash", env["env_hash"]),
            ("Python", snap.get("python_ver", "")),
            ("implementation", snap.get("python_impl", "")),
            ("OS", snap.get("os_info", "")),
            ("architecture", snap.get("machine_arch", "")),
            ("first received", iso(env["received"])),
        ]
    )
    packages = _kv_table(sorted(snap.get("packages", {}).items()))
    variables = _kv_table(sorted(snap.get("env_vars", {}).items()))
    groups = "".join(
        '<tr><td><a href="%s">%s</a></td><td>%s</td><td>%s</td><td class="n">%d</td><td class="n">%d</td>'
        '<td>%s</td></tr>'
        % (
            group_url(g["group_id"]),
            _h(_short(g["signature"], 100)),
            _h(g.get("script_name") or g["script_id"]),
            _h(g.get("host") or ""),
            g["failing"],
            g["succeeding"],
            _when(g["last_seen"], now),
        )
        for g in env["groups"]
    )
    compare = (
        '<form method="get" action="/diff" class="inline"><input type="hidden" name="a" value="%s">'
        '<label>Compare with env <input name="b" required placeholder="env hash"></label> '
        '<button type="submit">Diff</button></form>' % _h(env["env_hash"])
    )
    return layout(
        "Environment " + env["env_hash"],
        (
            '<h1>Environment <code>%s</code></h1>%s%s<h2>Runs here</h2><table><thead><tr><th>error</th><th>script</th>'
            '<th>host</th><th>failing</th><th>succeeding</th><th>last</th></tr></thead><tbody>%s</tbody></table>'
            '<h2>Packages (%d)</h2>%s<h2>Environment variables</h2>%s'
            % (_h(env["env_hash"]), facts, compare, groups, len(snap.get("packages", {})), packages, variables)
        ),
    )


def diff_page(a: dict, b: dict, rows: Sequence[Tuple[str, str, str]], same: int) -> str:
    body = (
        '<h1>Environment diff</h1><p><a href="%s">%s</a> \u2192 <a href="%s">%s</a> \u00b7 %d difference(s), '
        '%d thing(s) the same</p>'
        % (env_url(a["env_hash"]), _h(a["env_hash"]), env_url(b["env_hash"]), _h(b["env_hash"]), len(rows), same)
    )
    body += (
        '<table class="diff"><thead><tr><th>what</th><th>%s</th><th>%s</th></tr></thead><tbody>%s</tbody>'
        '</table>' % (_h(a["env_hash"]), _h(b["env_hash"]), _diff_rows(rows))
        if rows
        else '<p>The two environments do not differ in anything recorded.</p>'
    )
    return layout("Diff", body)


def _share_table(title: str, counts: Mapping[str, int]) -> str:
    total = sum(counts.values()) or 1
    rows = "".join(
        '<tr><td>%s</td><td class="n">%d</td><td class="n">%s</td></tr>'
        % (_h(k or "(unknown)"), v, _percent(v / total))
        for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:30]
    )
    return (
        '<div class="share"><h2>%s</h2><table><thead><tr><th></th><th>machines</th><th>share</th></tr></thead>'
        '<tbody>%s</tbody></table></div>' % (_h(title), rows)
    )


def fleet_page(
    hosts: Sequence[dict],
    agents: Mapping[str, int],
    pythons: Mapping[str, int],
    systems: Mapping[str, int],
    days: Sequence[Tuple[str, int, int]],
    window_days: int,
    now: float,
) -> str:
    rows = "".join(
        '<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td class="n">%d</td><td class="n">%d</td><td>%s</td>'
        '</tr>'
        % (
            _h(h["host"] or "(not sent)"),
            _h(h["agent"] or "?"),
            _h(h["python"]),
            _h(_short(h["os"], 40)),
            h["envs"],
            h["beacons"],
            _when(h["last_seen"], now),
        )
        for h in hosts
    )
    body = (
        '<h1>Fleet <span class="muted">(last %d days)</span></h1><p>%d machine(s) reported. Machines whose '
        'agent does not send a host name (older agents, <code>ERROR_AGENT_SEND_HOST=0</code>) are counted by '
        'environment.</p><section><h2>Beacons per day</h2>%s</section><div class="shares">%s%s%s</div>'
        '<h2>Machines</h2><table><thead><tr><th>host</th><th>agent</th><th>Python</th><th>OS</th><th>envs</th>'
        '<th>beacons</th><th>last contact</th></tr></thead><tbody>%s</tbody></table>'
        % (
            window_days,
            len(hosts),
            time_chart(days),
            _share_table("Agent versions", agents),
            _share_table("Python versions", pythons),
            _share_table("Operating systems", systems),
            rows,
        )
    )
    return layout("Fleet", body, active="/fleet")


def day_label(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


###############################################################################
# Static files ################################################################
###############################################################################

APP_CSS = """
:root { --fail: #c0392b; --ok: #2e86c1; --muted: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #111827; background: #fafafa; }
header { display: flex; gap: 2em; align-items: center; padding: .6em 1.2em; background: #1f2937; color: #fff; }
header a { color: #d1d5db; margin-right: 1em; text-decoration: none; }
header a.active, header a:hover { color: #fff; text-decoration: underline; }
.brand { font-weight: 600; }
main { padding: 1em 1.4em; max-width: 1400px; }
h1 { font-size: 1.35em; } h2 { font-size: 1.1em; margin-top: 1.6em; } h3 { font-size: 1em; }
h1.sig, td.sig a { font-family: ui-monospace, monospace; word-break: break-word; }
table { border-collapse: collapse; background: #fff; margin: .4em 0; }
th, td { border-bottom: 1px solid var(--line); padding: .35em .6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.type, .muted { color: var(--muted); } .type { font-size: .85em; }
.status { padding: 0 .45em; border-radius: 3px; font-size: .85em; border: 1px solid; }
.status-new { color: #b45309; } .status-regressed { color: #fff; background: var(--fail); border-color: var(--fail); }
.status-resolved { color: #15803d; } .status-ignored { color: var(--muted); }
.handled { font-size: .8em; color: var(--muted); border: 1px dotted; padding: 0 .3em; }
code { font-family: ui-monospace, monospace; background: #f3f4f6; padding: 0 .25em; word-break: break-word; }
.conf { font-weight: 600; }
table.groups time, table.groups .conf { white-space: nowrap; }
.filters { display: flex; flex-wrap: wrap; gap: .7em; align-items: end; margin: .6em 0 1em; }
.filters input { width: 11em; }
.pager { margin: 1em 0; display: flex; gap: 1em; }
svg .axis { stroke: #9ca3af; stroke-width: 1; } svg.spark rect { fill: var(--fail); }
svg rect.fail { fill: var(--fail); } svg rect.ok { fill: var(--ok); }
svg text { font-size: 11px; fill: #374151; } svg text.tick { fill: var(--muted); }
.features { display: flex; flex-wrap: wrap; gap: 1em 2em; }
figure.feature { margin: 0; } figcaption { font-weight: 600; margin-bottom: .2em; }
.legend .key { display: inline-block; width: 1em; height: .7em; margin: 0 .2em 0 1em; }
.key.fail { background: var(--fail); } .key.ok { background: var(--ok); }
.hint { background: #fff; border-left: 4px solid var(--ok); padding: .2em 1em; }
details { background: #fff; border: 1px solid var(--line); margin: .3em 0; padding: .3em .6em; }
pre { white-space: pre-wrap; word-break: break-word; font-size: 12.5px; max-height: 40em; overflow: auto; }
td.before { color: var(--fail); } td.after { color: #15803d; }
.shares { display: flex; flex-wrap: wrap; gap: 2em; }
.triage { display: inline; } .triage button, .filters button { cursor: pointer; }
.warn { color: var(--fail); }
"""

APP_JS = """// Progressive enhancement only: the pages work without it.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form.filters select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
});
"""
