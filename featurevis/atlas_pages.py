"""An atlas's static pages and its progress.json, in the store. TensorFlow-free: stdlib and the store only.

    atlases/<atlas_id>/index.html                 the atlas: its layers, with progress while it runs
    atlases/<atlas_id>/progress.json              the same for programs (featurevis.atlas.initial_progress)
    atlases/<atlas_id>/<layer>/index.html         a layer: a grid of its units, picture and top examples
    atlases/<atlas_id>/<layer>/units.json         what the layer page shows of each finished unit
    atlases/<atlas_id>/<layer>/unit_<NNNN>.html     a unit: picture, top and bottom examples, scores, parameters

Paths are stable, so a page can be linked to while the atlas runs. The pages
open from disk (relative links, inline CSS, no JavaScript), as the gallery does.

A finished batch publishes only what it changed: its units' pages, its layer's
units.json and page, progress.json and the atlas page. So a page update costs
the size of one layer, never a scan of the store; the gallery's index.html is
rebuilt once, when the atlas finishes. The caller holds the atlas's lock
(featurevis.atlas.page_lock) around `publish`: each update reads what the last
one wrote. These files are not synced to disk one by one (the results are): a
crash can cost a page or a recorded unit, which the next batch or a resubmission
rewrites from the results.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import quote

from featurevis import atlas as atlases
from featurevis.gallery import CSS, _e, _text
from featurevis.store import (ATLAS_PAGE, ATLAS_UNITS, IMAGE_NPY, IMAGE_PNG, META, ResultStore, atlas_key,
                              example_png, layer_folder)
from featurevis.store import unit_page as unit_page_name

INDEX, UNITS = ATLAS_PAGE, ATLAS_UNITS
HTML = "text/html; charset=utf-8"
UP_FROM_ATLAS, UP_FROM_LAYER = "../../", "../../../"  # from atlases/<id>/ and atlases/<id>/<layer>/ to the root
SHOWN_ON_LAYER = 3  # top examples beside each unit's picture on the layer page

PAGE_CSS = CSS + """
.bar{background:#ddd;border-radius:3px;height:10px;width:240px;display:inline-block;vertical-align:middle}
.bar span{display:block;background:#3a7;height:10px;border-radius:3px}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
.pixels{image-rendering:pixelated}
figure.unit{width:172px} .examples{display:flex;gap:2px;margin-top:4px}
.examples img{width:56px;height:56px}
figure.example{width:96px} figure.example img{width:96px;height:96px}
.big{width:320px;height:320px} .warning{background:#fff3cd;border:1px solid #e0c36b;padding:4px 8px;display:inline-block}
"""


def unit_record(spec, meta: dict, examples: dict | None, examples_key: str | None) -> dict:
    """What the unit's page and its layer's grid show of one finished unit (a job's spec and meta)."""
    return {"feature": spec.feature, "job_id": spec.job_id, "key": spec.key, "layer": spec.layer,
            "conv_id": spec.conv_id, "model": spec.model, "quality": meta.get("quality", {}),
            "final_loss": meta.get("final_loss"), "untrained": meta.get("untrained"),
            "parameters": {name: meta["spec"].get(name) for name in
                           ("model", "model_sha256", "layer", "conv_id", "feature", "iterations", "seed", "method")},
            "examples": None if examples is None else {"key": examples_key, "top": examples["top"],
                                                       "bottom": examples["bottom"]}}


def read_progress(store: ResultStore, atlas_id: str) -> atlases.AtlasProgress | None:
    try:
        return atlases.AtlasProgress.model_validate_json(store.read_bytes(atlases.key(atlas_id), atlases.PROGRESS))
    except FileNotFoundError:
        return None


def publish_progress(store: ResultStore, progress: atlases.AtlasProgress) -> None:
    """progress.json and the atlas page, which shows it."""
    progress.updated_at = _now()
    key = atlases.key(progress.atlas_id)
    store.put(key, atlases.PROGRESS, progress.model_dump_json(indent=1).encode(), content_type="application/json",
              durable=False)
    store.put(key, INDEX, atlas_page(progress).encode(), content_type=HTML, durable=False)


def begin(store: ResultStore, atlas: atlases.Atlas, in_flight: Callable[[], bool], run: str) -> dict[str, list[int]]:
    """Start a run of an atlas: publish its progress.json and page, return the units to queue by layer.

    Units an earlier run recorded are kept and not queued again, so a finished atlas queues nothing;
    nothing either while `in_flight()` says an earlier run's batches are still out, unless that run is
    `run` itself, delivered again because its worker died before it could send them. The caller holds
    the atlas's lock.
    """
    previous = read_progress(store, atlas.atlas_id)
    if previous is not None and previous.state == "running" and previous.started_by != run and in_flight():
        return {}
    recorded = {entry.layer: set(entry.done) for entry in previous.layers} if previous else {}
    wanted = {layer.layer: [feature for feature in layer.features if feature not in recorded.get(layer.layer, ())]
              for layer in atlas.layers}
    progress = atlases.initial_progress(atlas, {layer: sorted(done) for layer, done in recorded.items()})
    progress.started_by = run
    if not any(wanted.values()):
        progress.state, progress.finished_at = "done", previous.finished_at if previous else None
    publish_progress(store, progress)
    return {layer: features for layer, features in wanted.items() if features}


def publish(store: ResultStore, atlas: atlases.Atlas, layer: str, records: list[dict]) -> atlases.AtlasProgress:
    """A finished batch's pages: its units', its layer's, the atlas's; and progress.json. Returns the progress.

    A batch sent by name without `featurevis.atlas` before it starts the atlas's progress itself.
    """
    atlas_id = atlas.atlas_id
    progress = read_progress(store, atlas_id) or atlases.initial_progress(atlas)
    entry = progress.layer(layer)
    folder = atlas_key(atlas_id, layer)
    try:
        units = {int(feature): record for feature, record in json.loads(store.read_bytes(folder, UNITS)).items()}
    except FileNotFoundError:
        units = {}
    units.update({record["feature"]: record for record in records})
    ordered = [units[feature] for feature in sorted(units)]
    new = {record["feature"] for record in records}
    for index, record in enumerate(ordered):
        neighbours = {ordered[near]["feature"] for near in (index - 1, index + 1) if 0 <= near < len(ordered)}
        if record["feature"] in new or neighbours & new:  # a new unit, or one whose prev/next link it becomes
            store.put(folder, unit_page_name(record["feature"]),
                      unit_page(progress, record, ordered[index - 1] if index else None,
                                ordered[index + 1] if index + 1 < len(ordered) else None).encode(),
                      content_type=HTML, durable=False)
    store.put(folder, UNITS, json.dumps({str(feature): record for feature, record in units.items()}).encode(),
              durable=False)
    atlases.record_done(progress, layer, [record["feature"] for record in records])
    store.put(folder, INDEX, layer_page(progress, entry, ordered).encode(), content_type=HTML, durable=False)
    publish_progress(store, progress)
    return progress


def atlas_page(progress: atlases.AtlasProgress) -> str:
    rows = []
    for entry in progress.layers:
        done, total = len(entry.done), entry.total
        conv = "" if entry.conv_id is None else entry.conv_id
        name = f'<a href="{_href(layer_folder(entry.layer), INDEX)}">{_e(entry.layer)}</a>' if done else _e(entry.layer)
        rows.append(f"<tr><td>{name}</td><td>{conv}</td><td>{done} / {total}</td><td>{_bar(done, total)}</td></tr>")
    title = f"atlas of {progress.model}"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="note">atlas <code>{_e(progress.atlas_id)}</code>: {progress.done} of {progress.total} '
            f"units, {_e(progress.state)}; method {_e(progress.method)}, {progress.iterations} iterations, "
            f"seed {progress.seed}, model version <code>{_e(progress.model_sha256[:12])}</code>. "
            f'Updated {_e(progress.updated_at or "")}. <a href="{atlases.PROGRESS}">progress.json</a> · '
            f'<a href="{UP_FROM_ATLAS}index.html">gallery</a></p>',
            f"<p>{_bar(progress.done, progress.total)}</p>",
            "<table><tr><th>layer</th><th>conv_id</th><th>units done</th><th></th></tr>", *rows, "</table>"]
    return _page(title, body)


def layer_page(progress: atlases.AtlasProgress, entry: atlases.LayerProgress, units: list[dict]) -> str:
    cards = []
    for record in units:
        picture = _href(UP_FROM_LAYER + record["key"], IMAGE_PNG)
        examples = record["examples"]
        strip = ""
        if examples:
            strip = '<div class="examples">' + "".join(
                f'<img class="pixels" src="{_example_href(examples["key"], index)}" alt="dataset image {index}" '
                f'title="{_text(value)}">' for index, value in examples["top"][:SHOWN_ON_LAYER]) + "</div>"
        quality = record["quality"]
        cells = [("objective", quality.get("objective"))]
        if "activation_vs_dataset" in quality:
            cells.append(("vs dataset", quality["activation_vs_dataset"]))
        rows = "".join(f"<dt>{name}</dt><dd>{_shown(value)}</dd>" for name, value in cells)
        cards.append(f'<figure class="unit"><a href="{unit_page_name(record["feature"])}"><img class="pixels" '
                     f'src="{picture}" alt="unit {record["feature"]}" loading="lazy"></a>{strip}'
                     f'<figcaption><a href="{unit_page_name(record["feature"])}">unit {record["feature"]}</a>'
                     f"<dl>{rows}</dl></figcaption></figure>")
    title = f"{progress.model} / {entry.layer}"
    conv = "" if entry.conv_id is None else f" (conv_id {entry.conv_id})"
    body = [f"<h1>{_e(title)}{conv}</h1>",
            f'<p class="note">{len(entry.done)} of {entry.total} units done. '
            f'<a href="../{INDEX}">atlas</a> · each picture links to its unit; the small images are the dataset '
            f"images that excite the unit most.</p>",
            f'<div class="cards">{"".join(cards)}</div>']
    return _page(title, body)


def unit_page(progress: atlases.AtlasProgress, record: dict, previous: dict | None, following: dict | None) -> str:
    key = UP_FROM_LAYER + record["key"]
    title = f"{record['model']} / {record['layer']} / unit {record['feature']}"
    nav = [f'<a href="{INDEX}">layer</a>', f'<a href="../{INDEX}">atlas</a>']
    if previous:
        nav.insert(0, f'<a href="{unit_page_name(previous["feature"])}">← unit {previous["feature"]}</a>')
    if following:
        nav.append(f'<a href="{unit_page_name(following["feature"])}">unit {following["feature"]} →</a>')
    body = [f"<h1>{_e(title)}</h1>", f'<p class="note">{" · ".join(nav)}</p>',
            f'<p><img class="pixels big" src="{_href(key, IMAGE_PNG)}" alt="the picture of unit {record["feature"]}"></p>',
            f'<p><a href="{_href(key, META)}">meta.json</a> · <a href="{_href(key, IMAGE_NPY)}">image.npy</a> · '
            f'job <code>{_e(record["job_id"])}</code></p>']
    versus = record["quality"].get("activation_vs_dataset")
    if versus is not None and versus < 1:
        body.append(f'<p class="warning">The picture excites this unit less than its best dataset image does '
                    f'(activation_vs_dataset {_text(versus)}): it does not beat natural images.</p>')
    examples = record["examples"]
    if examples:
        for part, heading in (("top", "dataset images that excite it most"), ("bottom", "and least")):
            figures = "".join(
                f'<figure class="example"><img class="pixels" src="{_example_href(examples["key"], index)}" '
                f'alt="dataset image {index}"><figcaption>#{index}: {_text(value)}</figcaption></figure>'
                for index, value in examples[part])
            body.append(f'<h3>{heading}</h3><div class="cards">{figures}</div>')
    else:
        body.append('<p class="note">This model has no dataset: no examples.</p>')
    body.append("<h3>scores</h3>" + _table(record["quality"]))
    body.append("<h3>parameters</h3>" + _table(record["parameters"]))
    return _page(title, body)


def _table(values: dict) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(str(name))}</th><td>{_shown(value)}</td></tr>"
                               for name, value in values.items()) + "</table>"


def _shown(value) -> str:
    """A score as text; none (activation_vs_dataset where no dataset image excites the unit) as n/a."""
    return "n/a" if value is None else _text(value)


def _bar(done: int, total: int) -> str:
    share = 100.0 * done / total if total else 100.0
    return f'<span class="bar" title="{done} / {total}"><span style="width:{share:.1f}%"></span></span>'


def _href(key: str, name: str) -> str:
    return _e(quote(f"{key}/{name}"))


def _example_href(examples_key: str, index: int) -> str:
    return _href(UP_FROM_LAYER + examples_key, example_png(index))


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{_e(title)}</title>", f"<style>{PAGE_CSS}</style></head><body>", *body,
                      "</body></html>\n"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
