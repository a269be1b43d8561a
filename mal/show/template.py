"""The page ``mal show`` writes, as one template: HTML, inline CSS and the category filter's JavaScript.

No network resources, so the page opens from disk in any browser and can be zipped and shared. The
placeholders (``${title}``, ...) are filled by :func:`mal.show.page.render_page` with HTML that is
already escaped; ``$$`` is a literal ``$`` (string.Template). The script filters the rows by category;
the URL hash (``#cat=<name>``) selects a category on load and follows changes, so a filtered view can
be bookmarked or shared.
"""
from string import Template

__all__ = ["PAGE"]

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>mal masks: ${title}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}
.meta{margin:4px 0;font-size:14px}
.warn{color:#a40000;font-weight:bold}
table{border-collapse:collapse;margin-top:12px;background:#fff}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}
th{background:#eee;position:sticky;top:0}
td.cell{text-align:center}
td.cell img{display:block;margin:0 auto 2px;max-width:256px;image-rendering:pixelated}
.num{font-variant-numeric:tabular-nums}
.low{color:#b00000;font-weight:bold}
td.fallback{background:#ffe4e4;outline:2px solid #b00000;outline-offset:-2px}
.fb{display:inline-block;margin-top:2px;padding:0 4px;background:#b00000;color:#fff;font-weight:bold}
tr[hidden]{display:none}
</style>
</head>
<body>
<h1>Masks side by side</h1>
${meta}
<p class="meta"><label for="cat">category</label> <select id="cat">${options}</select>
&nbsp;<span id="shown">${rows}</span> of ${rows} rows shown</p>
<table>
<thead><tr>${head}</tr></thead>
<tbody>
${body}
</tbody>
</table>
<script>
(function () {
  var sel = document.getElementById('cat'), shown = document.getElementById('shown');
  function apply() {
    var v = sel.value, n = 0;
    document.querySelectorAll('tr[data-ann]').forEach(function (r) {
      r.hidden = v !== '' && r.getAttribute('data-cat') !== v;
      if (!r.hidden) n++;
    });
    shown.textContent = String(n);
  }
  var m = /^#cat=(.*)$$/.exec(location.hash);
  if (m) {
    var want = decodeURIComponent(m[1]);
    for (var i = 0; i < sel.options.length; i++) if (sel.options[i].value === want) sel.value = want;
  }
  sel.addEventListener('change', function () {
    try { history.replaceState(null, '', sel.value ? '#cat=' + encodeURIComponent(sel.value) : '#'); }
    catch (e) { /* some browsers refuse URL changes on file:// pages; filtering still works */ }
    apply();
  });
  apply();
})();
</script>
</body>
</html>
""")
