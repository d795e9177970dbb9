"""The report's side-by-side answers: one row per request with the question, both runs' status, answer text,
sources (relevant ones marked) and hit rank, the answers' similarity and the overlap of their sources.

Rows whose status or hit changed come first (the report's order) and are highlighted. A few lines of inline
JavaScript make the table sortable (click a column header; again to reverse) and filterable (text in any cell,
and "changed only" / "status changed" / "hit changed"); a line under the controls says how many rows are shown.
Without JavaScript the table is complete, in the report's order.
"""

from __future__ import annotations

import html

from workers.evaluation.models import Report, RequestRow, RunAnswer
from workers.evaluation.numbers import human

ANSWERS_CSS = """
#answers{table-layout:fixed;width:100%} #answers td{vertical-align:top;overflow-wrap:anywhere}
#answers th[data-k]{cursor:pointer;user-select:none}
#answers th[data-k]:after{content:" \\2195";color:#aaa} #answers tr.changed td{background:#fff8e1}
#answers .ans{text-align:left}
#answers .txt{max-height:9em;overflow:auto;white-space:pre-wrap;margin-bottom:4px}
#answers .src{color:#555;font-size:11px} #answers .src .rel{color:#1e6b1a;font-weight:bold}
#answers .qq{text-align:left} .tag{font-size:10px;padding:0 4px;border-radius:3px;background:#f5c26b}
.controls{margin:6px 0;font-size:13px} .controls input{width:260px}
"""

#: Sorting and filtering of the answers table (no library).
ANSWERS_JS = """
(function () {
  var table = document.getElementById('answers');
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var text = document.getElementById('answers-filter');
  var show = document.getElementById('answers-show');
  var count = document.getElementById('answers-count');
  function apply() {
    var f = text.value.toLowerCase(), m = show.value, n = 0;
    rows.forEach(function (r) {
      var ch = r.getAttribute('data-changed');
      var keep = (!f || r.textContent.toLowerCase().indexOf(f) >= 0) &&
        (m === 'all' || (m === 'changed' ? ch !== '' : ch.split(' ').indexOf(m) >= 0));
      r.style.display = keep ? '' : 'none';
      if (keep) { n += 1; }
    });
    count.textContent = n + ' of ' + rows.length + ' requests shown';
  }
  function value(row, col, numeric) {
    var cell = row.cells[col];
    var v = cell.hasAttribute('data-v') ? cell.getAttribute('data-v') : cell.textContent;
    if (!numeric) { return v.toLowerCase(); }
    var x = parseFloat(v);
    return isNaN(x) ? Infinity : x;
  }
  Array.prototype.forEach.call(table.tHead.querySelectorAll('th[data-k]'), function (th) {
    th.addEventListener('click', function () {
      var col = th.cellIndex, numeric = th.getAttribute('data-k') === 'n';
      var dir = th.getAttribute('data-dir') === 'asc' ? -1 : 1;
      th.setAttribute('data-dir', dir === 1 ? 'asc' : 'desc');
      rows.sort(function (a, b) {
        var x = value(a, col, numeric), y = value(b, col, numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  text.addEventListener('input', apply);
  show.addEventListener('change', apply);
  apply();
})();
"""


#: Column widths (the table is as wide as the page; the two answers share what the others leave).
_COLS = (
    "<colgroup><col style='width:32px'><col style='width:170px'><col style='width:80px'>"
    + "<col style='width:50px'>" * 2
    + "<col style='width:72px'>" * 4
    + "<col><col></colgroup>"
)


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _answer_cell(a: RunAnswer, relevant: set[str]) -> str:
    """Status, answer text and sources of one run's answer."""
    if a.status == "ok":
        text = f"<div class='txt'>{_e(a.answer or '')}</div>"
    else:
        why = f": {_e(a.error_class)}" if a.error_class else ""
        text = f"<div class='txt bad'>{_e(a.status)}{why}</div>"
    srcs = []
    for i, s in enumerate(a.sources):
        cls = " class='rel'" if s.document_id in relevant else ""
        srcs.append(f"<span{cls} title='{_e(s.chunk_id)}'>{i + 1}. {_e(s.document_id)} {s.score:.2f}</span>")
    return f"<td class='ans'>{text}<div class='src'>{' · '.join(srcs) or 'no sources'}</div></td>"


def _num(v: float | None, digits: int | None = None) -> str:
    """A numeric cell: the value to sort by and the value to read."""
    return f"<td data-v='{'' if v is None else v}'>{human(v, digits)}</td>"


def _row(i: int, r: RequestRow) -> str:
    relevant = set(r.relevant)
    b, c = r.baseline, r.candidate
    tags = "".join(f" <span class='tag'>{_e(t)} changed</span>" for t in r.changed)
    status = _e(b.status) if b.status == c.status else f"{_e(b.status)} → {_e(c.status)}"
    return (
        f"<tr class='{'changed' if r.changed else ''}' data-changed='{_e(' '.join(r.changed))}'>"
        f"<td data-v='{i}'>{i}</td>"
        f"<td class='qq' title='{_e(r.request_id)}'>{_e(r.query or r.request_id)}{tags}</td>"
        f"<td class='l'>{status}</td>"
        + _num(b.first_hit_rank, 0)
        + _num(c.first_hit_rank, 0)
        + _num(r.answer_similarity, 3)
        + _num(r.chunk_overlap, 2)
        + _num(b.processing_ms, 0)
        + _num(c.processing_ms, 0)
        + _answer_cell(b, relevant)
        + _answer_cell(c, relevant)
        + "</tr>"
    )


def answers_table(report: Report) -> str:
    """The side-by-side answers section (heading, controls, table, script)."""
    b, c = report.baseline, report.candidate
    n_changed = sum(1 for r in report.requests if r.changed)
    head = (
        "<thead><tr><th data-k='n'>#</th><th class='l' data-k='s'>question</th><th class='l' data-k='s'>status</th>"
        "<th data-k='n' title='rank of the first relevant source'>base hit</th>"
        "<th data-k='n' title='rank of the first relevant source'>cand hit</th>"
        "<th data-k='n' title='cosine of the two answers (all-MiniLM-L6-v2)'>similarity</th>"
        "<th data-k='n' title='share of the smaller set of chunks found in the larger'>chunk overlap</th>"
        "<th data-k='n'>base processing ms</th><th data-k='n'>cand processing ms</th>"
        f"<th class='l' data-k='s'><span class='b'>baseline</span> {_e(b.source)}</th>"
        f"<th class='l' data-k='s'><span class='c'>candidate</span> {_e(c.source)}</th></tr></thead>"
    )
    rows = "".join(_row(i + 1, r) for i, r in enumerate(report.requests))
    return (
        "<h2 id='answers-side-by-side'>Answers side by side</h2>"
        f"<p class='meta'>{n_changed} of {len(report.requests)} requests changed status or hit (listed first, "
        "highlighted). Sources: rank, document, cosine score; relevant documents (labels) in green. Click a column "
        "header to sort.</p>"
        "<div class='controls'>filter <input id='answers-filter' type='search' placeholder='text in any column'> "
        "<select id='answers-show'><option value='all'>all requests</option>"
        "<option value='changed'>changed only</option><option value='status'>status changed</option>"
        "<option value='hit'>hit changed</option></select> <span id='answers-count'></span></div>"
        f"<table id='answers'>{_COLS}{head}<tbody>{rows}</tbody></table>"
        f"<script>{ANSWERS_JS}</script>"
    )
