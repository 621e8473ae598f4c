"""The Jinja2 template of ``report.html``: one file, inline CSS, images as data URIs, no script, no link out."""

REPORT_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  :root { --ink: #1d2433; --muted: #5b6475; --line: #d9dde5; --accent: #1f5fa8; --warn: #9a3412; }
  * { box-sizing: border-box; }
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         margin: 0; background: #f5f6f8; }
  main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
  h1 { font-size: 26px; margin: 0 0 4px; }
  h2 { font-size: 20px; margin: 36px 0 10px; padding-top: 8px; border-top: 2px solid var(--line); }
  h3 { font-size: 16px; margin: 22px 0 6px; }
  .sub { color: var(--muted); margin: 0 0 14px; }
  .banner { background: #fff4e5; border-left: 5px solid var(--warn); padding: 10px 14px; margin: 12px 0 18px; }
  .note { color: var(--muted); font-size: 13px; }
  nav { font-size: 14px; margin: 8px 0 4px; }
  nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
  table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
  th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: right; vertical-align: top; }
  th:first-child, td:first-child { text-align: left; }
  th { background: #f0f2f6; }
  td.text, th.text { text-align: left; }
  .ci { color: var(--muted); font-size: 12px; }
  .pass { color: #166534; font-weight: 600; }
  .fail { color: #b91c1c; font-weight: 600; }
  figure { margin: 10px 0 18px; }
  figure img { max-width: 100%; border: 1px solid var(--line); }
  figcaption { color: var(--muted); font-size: 13px; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
  .tile { border: 1px solid var(--line); padding: 6px; font-size: 12px; }
  .tile .pair { display: flex; gap: 4px; }
  .tile .pair div { flex: 1; text-align: center; color: var(--muted); }
  .tile img { width: 100%; display: block; }
  .tile .file { word-break: break-all; color: var(--muted); }
  .two { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
  pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
  dl.card { display: grid; grid-template-columns: 190px 1fr; gap: 4px 14px; }
  dl.card dt { font-weight: 600; }
  dl.card dd { margin: 0; }
  ul { margin-top: 4px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="sub">{{ subtitle }}</p>
<div class="banner"><strong>Research use only.</strong> This model is not a medical device and must not be used to
diagnose, treat or triage patients. Its outputs are for research and education on public data.</div>
<nav>
  <a href="#summary">Summary</a><a href="#card">Model card</a><a href="#metrics">Metrics</a>
  <a href="#calibration">Calibration</a><a href="#guard">Input guard</a><a href="#training">Training</a>
  <a href="#explanations">Explanations</a>
  <a href="#reproduce">Reproducibility</a>
</nav>

<h2 id="summary">Summary</h2>
<table>
  <tr><th>metric</th><th>official {{ split }} split</th><th>deduplicated {{ split }} split</th></tr>
  {% for row in headline %}
  <tr><td>{{ row.name }}</td><td>{{ row.official }}</td><td>{{ row.dedup }}</td></tr>
  {% endfor %}
</table>
<p class="note">{{ ci_note }} {{ dedup_note }}</p>

<h2 id="card">Model card</h2>
<dl class="card">
  {% for item in card_details %}<dt>{{ item[0] }}</dt><dd>{{ item[1] }}</dd>{% endfor %}
</dl>
<h3>Intended use</h3>
<ul>{% for line in intended_use %}<li>{{ line }}</li>{% endfor %}</ul>
<h3>Training data</h3>
<ul>{% for line in training_data %}<li>{{ line }}</li>{% endfor %}</ul>
<h3>Metrics (95% bootstrap confidence intervals)</h3>
<ul>{% for line in card_metrics %}<li>{{ line }}</li>{% endfor %}</ul>
<h3>Limits</h3>
<ul>{% for line in limits %}<li>{{ line }}</li>{% endfor %}</ul>
<h3>Failure modes seen in this evaluation</h3>
<ul>{% for line in failure_modes %}<li>{{ line }}</li>{% endfor %}</ul>

<h2 id="metrics">Metrics on {{ split }}</h2>
<h3>Per class (official split)</h3>
<table>
  <tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>ROC AUC</th><th>support</th></tr>
  {% for row in per_class %}
  <tr><td>{{ row.name }}</td><td>{{ row.precision }}</td><td>{{ row.recall }}</td><td>{{ row.f1 }}</td>
      <td>{{ row.auc }}</td><td>{{ row.support }}</td></tr>
  {% endfor %}
</table>
<div class="two">
  {% for fig in metric_figures %}
  <figure><img src="{{ fig.uri }}" alt="{{ fig.title }}"><figcaption>{{ fig.caption }}</figcaption></figure>
  {% endfor %}
</div>

<h2 id="calibration">Calibration and selective prediction</h2>
<div class="two">
  {% for fig in calibration_figures %}
  <figure><img src="{{ fig.uri }}" alt="{{ fig.title }}"><figcaption>{{ fig.caption }}</figcaption></figure>
  {% endfor %}
</div>
{% for line in calibration_notes %}<p class="note">{{ line }}</p>{% endfor %}

<h2 id="guard">Input guard (out-of-distribution inputs)</h2>
{% if guard_rows %}
<table>
  <tr><th>images</th><th>count</th><th>flagged</th><th>share flagged</th></tr>
  {% for item in guard_rows %}
  <tr><td>{{ item[0] }}</td><td>{{ item[1] }}</td><td>{{ item[2] }}</td><td>{{ item[3] }}</td></tr>
  {% endfor %}
</table>
{% endif %}
{% if guard_accepted %}
<table>
  <tr><th>metric</th><th>all images</th><th>accepted images (not flagged)</th></tr>
  {% for item in guard_accepted %}
  <tr><td>{{ item[0] }}</td><td>{{ item[1] }}</td><td>{{ item[2] }}</td></tr>
  {% endfor %}
</table>
{% endif %}
{% for fig in guard_figures %}
<figure><img src="{{ fig.uri }}" alt="{{ fig.title }}"><figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}
{% for line in guard_notes %}<p class="note">{{ line }}</p>{% endfor %}
{% if guard_examples %}
<div class="grid">
{% for tile in guard_examples %}
  <div class="tile">
    <img src="{{ tile.uri }}" alt="flagged image, ood_score {{ tile.score }}">
    <div><strong>ood_score {{ tile.score }}</strong>: true {{ tile.true }}, no diagnosis (flagged)</div>
    <div class="file">{{ tile.file }}</div>
  </div>
{% endfor %}
</div>
{% endif %}

<h2 id="training">Training</h2>
{% for fig in training_figures %}
<figure><img src="{{ fig.uri }}" alt="{{ fig.title }}"><figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}
{% for line in training_notes %}<p class="note">{{ line }}</p>{% endfor %}

<h2 id="explanations">Explanations</h2>
<h3>Most confident mistakes, with Grad-CAM</h3>
<p class="note">{{ mistakes_note }}</p>
<div class="grid">
{% for tile in mistakes %}
  <div class="tile">
    <div class="pair">
      <div><img src="{{ tile.predicted_uri }}" alt="Grad-CAM for {{ tile.predicted }}">for {{ tile.predicted }}</div>
      <div><img src="{{ tile.true_uri }}" alt="Grad-CAM for {{ tile.true }}">for {{ tile.true }}</div>
    </div>
    <div><strong>true {{ tile.true }}</strong>, predicted {{ tile.predicted }} ({{ tile.confidence }})</div>
    <div class="file">{{ tile.file }}</div>
  </div>
{% endfor %}
</div>
<h3>Sanity checks of the maps</h3>
{% if sanity_rows %}
<table>
  <tr><th>method</th><th class="text">model randomisation test</th><th class="text">label randomisation test</th>
      <th class="text">deletion curve</th></tr>
  {% for row in sanity_rows %}
  <tr><td>{{ row.method }}</td>
      <td class="text">mean |Spearman rho| {{ row.rho }} (threshold &lt; {{ row.threshold }}{% if row.constant %};
          {{ row.constant }} randomised maps were empty, counted as rho 0{% endif %}):
          <span class="{{ 'pass' if row.rand_pass else 'fail' }}">{{ 'pass' if row.rand_pass else 'FAIL' }}</span></td>
      <td class="text">{{ row.labels_text }}{% if row.labels_pass is not none %}:
          <span class="{{ 'pass' if row.labels_pass else 'fail' }}">{{ 'pass' if row.labels_pass else 'FAIL' }}</span>
          {% endif %}</td>
      <td class="text">AUC {{ row.auc_attr }} vs random order {{ row.auc_random }}
          (faster on {{ row.wins }} images):
          <span class="{{ 'pass' if row.del_pass else 'fail' }}">{{ 'pass' if row.del_pass else 'FAIL' }}</span>
      </td></tr>
  {% endfor %}
</table>
{% endif %}
{% for fig in sanity_figures %}
<figure><img src="{{ fig.uri }}" alt="{{ fig.title }}"><figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}
<p class="note">{{ sanity_note }}</p>

<h2 id="reproduce">Reproducibility</h2>
<h3>Data</h3>
<table>{% for item in data_rows %}
  <tr><td>{{ item[0] }}</td><td class="text">{{ item[1] }}</td></tr>{% endfor %}
</table>
<h3>Bundle</h3>
<table>{% for item in bundle_rows %}
  <tr><td>{{ item[0] }}</td><td class="text">{{ item[1] }}</td></tr>{% endfor %}
</table>
<h3>Library versions</h3>
<table>
  <tr><th>library</th><th class="text">when trained</th><th class="text">this report</th></tr>
  {% for item in versions %}
  <tr><td>{{ item[0] }}</td><td class="text">{{ item[1] }}</td><td class="text">{{ item[2] }}</td></tr>
  {% endfor %}
</table>
<h3>Recipe</h3>
<pre>{{ recipe_yaml }}</pre>
<p class="note">Generated {{ generated }} by braintumor {{ braintumor_version }}.</p>
</main>
</body>
</html>
"""
