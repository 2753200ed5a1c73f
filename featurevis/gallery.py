"""A static gallery of the store: `index.html` at its root, rebuilt whole and swapped in atomically.

The page needs no server and no JavaScript: inline CSS, and relative links to each
result's `image.png` and `meta.json`, so it opens straight from disk (or from an S3
bucket served over HTTP, where the relative links resolve the same way). It groups
complete results (those whose `meta.json` exists) by model / layer / feature and lists
each layer's sweeps with their contact sheets. Every string that comes from a meta or
a key is HTML-escaped.

A worker rebuilds the page before it answers each job. A process reads each `meta.json`
once and keeps what the page shows of it, so a rebuild costs a listing of the store and the
page itself, still growing with the number of results (bench/RESULTS.md has the figures;
per-layer pages would make it grow with a layer's). TF-free: stdlib and the store only.

    python -m featurevis.gallery [RESULTS_DIR]     # rebuild by hand
"""
from __future__ import annotations

import glob
import html
import json
import logging
import math
import os
import re
import sys
from collections import defaultdict
from datetime import datetime, timezone
from urllib.parse import quote

from featurevis.store import (
    CONTACT_SHEET,
    GALLERY,
    GALLERY_LOCK,
    IMAGE_PNG,
    META,
    RECORD_DEPTH,
    model_and_layer,
    ResultStore,
)

log = logging.getLogger(__name__)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:18px;margin:24px 0 4px;border-bottom:2px solid #ccc}
h3{font-size:15px;margin:14px 0 4px} h4{font-size:13px;margin:8px 0 4px;color:#555}
.note{color:#666;font-size:12px} .feature{margin:0 0 10px 8px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px;width:172px}
figure img{display:block;width:172px;height:auto;background:#eee}
figure.sweep{width:344px} figure.sweep img{width:344px}
figcaption{font-size:11px;margin-top:4px} dl{display:grid;grid-template-columns:auto 1fr;gap:0 6px;margin:0}
dt{color:#777} dd{margin:0;overflow-wrap:anywhere}
.untrained{display:inline-block;background:#b33;color:#fff;border-radius:3px;padding:0 4px;font-size:11px}
"""


def rebuild(store: ResultStore) -> str:
    """Scan the store for complete results and sweeps, publish `index.html` at its root, return where it is.

    Reads every meta.json: the cost scales with the number of results. On a local
    store the scan and the swap run under an advisory lock (`.gallery.lock`), so when
    several workers rebuild at once the last page written is also the last scan: no
    result written before a rebuild goes missing from the final page. On S3 there is
    no such lock: the last writer wins and a result a slower rebuild missed shows up
    in the next one.
    """
    with _local_lock(store):
        results, sweeps = _scan(store)
        _publish(store, GALLERY, page(results, sweeps).encode("utf-8"))
    return store.locate("", GALLERY)


def try_rebuild(store: ResultStore) -> str | None:
    """rebuild, but a gallery problem never fails a job whose result is already published: log it instead."""
    try:
        return rebuild(store)
    except Exception:  # noqa: BLE001 - best effort by design
        log.warning("could not rebuild the gallery at %s", store.locate("", GALLERY), exc_info=True)
        return None


# What the page shows of each meta.json, by (path, size, modification time): a meta is written once, so a
# process reads each only once, and a rebuild costs a listing of the store plus the page itself.
_SHOWN = ("iterations", "seed", "method", "final_loss", "quality", "untrained", "created_at", "jobs", "features")
_seen: dict[tuple, dict] = {}


def _shown(key: str, meta: dict) -> dict:
    """Where a meta belongs (model, layer, features or sweep id), the fields a card shows, and its card.

    Only the last prediction is kept: a meta's histories are most of its size. The card is made here, once
    per meta as the rest: writing the cards was most of a rebuild's time.
    """
    shown = {field: meta[field] for field in _SHOWN if field in meta}
    if isinstance(meta.get("predictions"), list) and meta["predictions"]:
        shown["predictions"] = meta["predictions"][-1:]
    model, layer = model_and_layer(key)
    shown.update(key=key, model=str(meta.get("model", model)), layer=str(meta.get("layer_name", meta.get("layer", layer))))
    if "sweep_id" in meta:
        shown.update(kind="sweep", id=str(meta["sweep_id"]))
        shown["card"] = _sweep_card(key, shown["id"], shown)
    elif "job_id" in meta:
        spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
        terms = spec.get("terms") or []  # objective kinds other than channels
        targets = spec.get("targets") or ([] if terms else [[meta.get("feature"), 1.0]])
        shown.update(kind="result", id=str(meta["job_id"]), features=tuple(int(feature) for feature, _ in targets),
                     objectives=tuple(_term_label(term) for term in terms))
        shown["card"] = _result_card(key, shown["id"], shown)
    return shown


def _term_label(term: dict) -> str:
    if term.get("objective") == "neuron":
        return f"neuron {term.get('feature')} at ({term.get('x')}, {term.get('y')})"
    return str(term.get("objective"))


def _scan(store: ResultStore) -> tuple[list[dict], list[dict]]:
    """What the page shows of every complete result and sweep. Unreadable metas are skipped with a warning."""
    global _seen
    prefix = store.root.rstrip("/") + "/"
    versions = {path: version for path, version in _metas(store).items()
                if path.startswith(prefix) and path.endswith("/" + META)}
    unread = [path for path in versions if versions[path] not in _seen]
    contents = store.fs.cat(unread, on_error="omit") if unread else {}
    seen, shown = {}, {"result": [], "sweep": []}
    for path, version in versions.items():
        try:
            meta = _seen[version] if path not in contents and version in _seen else \
                _shown(path[len(prefix):-len(META) - 1], _json_object(contents[path]))
        except (KeyError, ValueError, TypeError) as error:  # deleted meanwhile, not JSON, or not a result's
            log.warning("gallery skips %s: %s", path, error)
            continue
        seen[version] = meta
        if meta.get("kind") in shown:
            shown[meta["kind"]].append(meta)
    _seen = seen  # what is gone from the store is forgotten
    return shown["result"], shown["sweep"]


def _metas(store: ResultStore) -> dict[str, tuple]:
    """Every meta.json under the root, as path -> (path, size, modification time).

    On a local store, only the two depths results and sweeps sit at are listed (C's scandir through
    glob): fsspec's find stats every file of the store, the images too, at four times the cost.
    """
    if not store.local:
        listing = store.fs.find(store.root, detail=True)
        return {path: (path, info.get("size"), str(info.get("LastModified") or info.get("mtime")))
                for path, info in listing.items() if path.endswith("/" + META)}
    found = {}
    for path in glob.glob(os.path.join(glob.escape(store.root), *"*" * RECORD_DEPTH, META)):
        try:
            stat = os.stat(path)
        except FileNotFoundError:  # deleted meanwhile
            continue
        found[path] = (path, stat.st_size, str(stat.st_mtime_ns))
    return found


def _json_object(raw: bytes) -> dict:
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def page(results: list[dict], sweeps: list[dict]) -> str:
    """The page, from what _scan shows of each result and sweep."""
    tree: dict = defaultdict(lambda: defaultdict(lambda: {"features": defaultdict(list), "sweeps": []}))
    for meta in results:
        group = (meta["features"], meta.get("objectives", ()))  # channels, then any other kinds of term
        tree[meta["model"]][meta["layer"]]["features"][group].append((meta["key"], meta["id"], meta))
    for meta in sweeps:
        tree[meta["model"]][meta["layer"]]["sweeps"].append((meta["key"], meta["id"], meta))
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>featurevis gallery</title>", f"<style>{CSS}</style></head><body>",
           "<h1>featurevis gallery</h1>",
           f'<p class="note">{len(results)} results, {len(sweeps)} sweeps; generated {_e(generated)}. '
           "Each thumbnail links to the full image; “meta” to its meta.json.</p>"]
    for model in sorted(tree, key=_natural):
        out.append(f'<section class="model"><h2>{_e(model)}</h2>')
        for layer in sorted(tree[model], key=_natural):
            group = tree[model][layer]
            out.append(f'<section class="layer"><h3>{_e(model)} / {_e(layer)}</h3>')
            for feature in sorted(group["features"]):
                runs = sorted(group["features"][feature], key=lambda run: (str(run[2].get("created_at", "")), run[0]))
                channels, kinds = feature
                label = f"feature {channels[0]}" if len(channels) == 1 else f"features {' + '.join(map(str, channels))}"
                if kinds:
                    label = f"objective {' + '.join([*map(str, channels), *kinds])}"
                out.append(f'<div class="feature"><h4>{label}</h4><div class="cards">')
                out.extend(meta["card"] for _, _, meta in runs)
                out.append("</div></div>")
            if group["sweeps"]:
                out.append('<div class="feature"><h4>sweeps</h4><div class="cards">')
                out.extend(meta["card"] for _, _, meta in sorted(group["sweeps"], key=lambda sweep: sweep[0]))
                out.append("</div></div>")
            out.append("</section>")
        out.append("</section>")
    if not tree:
        out.append('<p class="note">No complete results yet.</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


def _result_card(key: str, job_id: str, meta: dict) -> str:
    rows = [(name, _text(meta[field])) for name, field in
            (("iterations", "iterations"), ("seed", "seed"), ("method", "method"), ("final loss", "final_loss"))
            if meta.get(field) is not None]
    predictions = meta.get("predictions")
    if isinstance(predictions, list) and predictions and isinstance(predictions[-1], dict):
        last = predictions[-1]
        rows.append(("class", f"{_text(last.get('class_name'))} (#{_text(last.get('class_id'))}, "
                              f"{_text(last.get('score'))} @ {_text(last.get('iteration'))})"))
    quality = meta.get("quality")
    if isinstance(quality, dict):
        rows.extend((f"q: {name}", _text(value)) for name, value in sorted(quality.items(), key=lambda kv: str(kv[0])))
    badge = ' <span class="untrained">untrained</span>' if meta.get("untrained") is True else ""
    cells = "".join(f"<dt>{_e(str(name))}</dt><dd>{value}</dd>" for name, value in rows)
    image, meta_link = _href(key, IMAGE_PNG), _href(key, META)
    return (f'<figure class="result"><a href="{image}"><img src="{image}" alt="{_e(key)}" loading="lazy"></a>'
            f'<figcaption><code>{_e(job_id[:12])}</code>{badge} <a href="{meta_link}">meta</a>'
            f"<dl>{cells}</dl></figcaption></figure>")


def _sweep_card(key: str, sweep_id: str, meta: dict) -> str:
    features = meta.get("features") if isinstance(meta.get("features"), list) else ["?"]
    sheet, meta_link = _href(key, CONTACT_SHEET), _href(key, META)
    return (f'<figure class="sweep"><a href="{sheet}"><img src="{sheet}" alt="{_e(key)}" loading="lazy"></a>'
            f'<figcaption><code>{_e(sweep_id[:12])}</code> <a href="{meta_link}">meta</a>'
            f"<dl><dt>features</dt><dd>{_e(', '.join(map(str, features)))}</dd></dl></figcaption></figure>")


def _href(key: str, name: str) -> str:
    """A relative URL from the root's index.html to a file of a key, escaped for an attribute."""
    return _e(quote(f"{key}/{name}"))


def _text(value) -> str:
    """A meta value as escaped text: numbers compactly, anything else through str."""
    if isinstance(value, bool) or value is None:
        return _e(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return _e(str(value))


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _natural(name: str) -> list:
    """conv2d_2 before conv2d_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class _local_lock:
    """An exclusive flock on `<root>/.gallery.lock` for a local store; nothing for a remote one."""

    def __init__(self, store: ResultStore):
        self.path = os.path.join(store.root, GALLERY_LOCK) if store.local else None
        self.handle = None

    def __enter__(self):
        if self.path is not None:
            import fcntl

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.handle = open(self.path, "a")
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()  # closing releases the lock


def _publish(store: ResultStore, name: str, data: bytes) -> None:
    """Put the page at the store's root, whole or not at all (as every artefact is)."""
    store.put("", name, data, content_type="text/html; charset=utf-8")


if __name__ == "__main__":
    print(rebuild(ResultStore(sys.argv[1]) if len(sys.argv) > 1 else ResultStore.from_env()))
