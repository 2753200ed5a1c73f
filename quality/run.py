"""`make quality`: every method at its defaults, measured, not claimed.

A default job is what most users run, so each method runs here with what a job that leaves the settings
out gets (contract.METHOD_DEFAULTS: its iterations, rate and transforms), on seeds 0-9, which
`make quality-defaults` did not choose those defaults on:
1. shapes_cnn, 10 classes x 10 seeds: does the judge, shapes_judge (another architecture, trained on
   another generator: featurevis/shapes_judge.py, frozen), give the target class at least
   scoring.JUDGE_SEES (transferability), overall and for each class? And does SECOND_JUDGE, its twin trained
   on clean images (frozen too): the issue's outside figure is the mean of two judges, one of them clean, so
   the goal is checked on the two judges' mean as well. For comparison, shapes_cnn_b, which learnt from
   shapes_cnn's own generator (its agreement overstates transferability). With held-out
   robustness (featurevis.scoring) and `activation_vs_dataset`, the logit at the picture over the best of
   shapes_cnn's dataset, as an atlas computes it (featurevis.examples);
2. channel CHANNEL of each shapes_cnn conv layer, 10 seeds: held-out robustness, specificity and
   `activation_vs_dataset`; and inception_v3_untrained at conv_id 5, 50 and 93, held-out robustness and
   specificity at INCEPTION_ITERATIONS for every method (a step there costs 0.2-0.6 s on 2 cores, so its
   methods' defaults would take most of the run, on a network that has learnt nothing);
3. quality/results.json, and quality/contact_sheet.png: one row per class, one column per method, each
   tile at least SHEET_TILE px (shapes' 64-px pictures enlarged, nearest neighbour).
It prints whether the best method reaches GOAL (by the judge, and by both judges' mean) and every measure
where a method is below the tutorial's.
`python -m quality.run --seeds 500-519` runs part 1 alone on other seeds and writes nothing: the defaults
measured on seeds that no choice of them has seen.
It runs the worker's own functions (render.run, scoring.scores) in this process.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from featurevis import datasets, examples, images, registry, scoring
from featurevis.contract import METHOD_DEFAULTS, METHODS, spec_start
from featurevis.factory import ModelFactory
from featurevis.optvis import objectives, render

ROOT = Path(__file__).resolve().parent.parent

MODEL = "shapes_cnn"
SEEDS = tuple(range(10))  # 10, not 5: with 5 seeds one picture decides whether a class reaches CLASS_GOAL
INCEPTION_ITERATIONS = 30
SAME_GENERATOR_MODEL = "shapes_cnn_b"  # trained on featurevis/shapes.py like shapes_cnn: not independent
SECOND_JUDGE = "shapes_judge_clean"  # the judge's architecture and generator, trained on clean images
CHANNEL = 1  # the channel of each shapes_cnn conv layer that part 2 climbs
SHEET_TILE = 128
GOAL = 0.9  # the share of class pictures the judge should recognize, for the best method at its defaults
CLASS_GOAL = 2 / 3  # and of each class's seeds
TUTORIAL = "gradient_ascent"


def run(factory: ModelFactory, model: str, conv_id, method: str, features: list[int], seeds: list[int],
        iterations: int, ranked: dict | None = None) -> tuple[np.ndarray, list[dict]]:
    """One batch, exactly as a worker would run it; the pictures and their quality scores, each compared with
    its unit's best dataset image where there is a ranking (as an atlas's units are)."""
    acquired = factory.acquire(model, conv_id, method)
    info = acquired.model.info
    weights = objectives.weights_matrix([{feature: 1.0} for feature in features], info.feature_count(conv_id))
    start = acquired.step.start(seeds, *start_arguments(factory, acquired.model, conv_id,
                                                        METHOD_DEFAULTS[method].start, features, seeds))
    ascent = render.run(acquired.step, seeds, weights, iterations, state=start)  # the final read gives the classes
    scores = scoring.scores(scoring.read(acquired.probe, ascent.images), ascent.images, weights, conv_id is None,
                            factory.judge(model))
    if ranked is not None:
        scores = [{**row, **examples.versus(row["objective"], examples.unit(ranked, feature)["best"])}
                  for row, feature in zip(scores, features)]
    return ascent.images, scores


def start_arguments(factory: ModelFactory, loaded, conv_id: int | None, start: str, features: list[int],
                    seeds: list[int]) -> tuple:
    """A step's start arguments after the seeds for a batch of `features` and `seeds` starting at `start`
    (contract.STARTS), as a worker's batch gives a job's (dataset_starts.py): a model with no dataset starts from
    noise, as its jobs do."""
    fingerprint = datasets.fingerprint(factory.models.store_registry(), loaded.info)
    return factory.dataset_starts.arguments(loaded, loaded.info.target_layer(conv_id), features, seeds,
                                            spec_start(start, fingerprint))


def ranking(factory: ModelFactory, conv_id: int | None) -> dict:
    """shapes_cnn's dataset ranked at a layer, as an atlas batch ranks it."""
    loaded = factory.model(MODEL)
    return examples.ranking(loaded, datasets.for_model(registry.Registry.from_env(), loaded.info),
                            loaded.info.target_layer(conv_id))


def means(scores: list[dict]) -> dict:
    """A batch's scores averaged, each over the pictures that have it (activation_vs_dataset: those whose unit
    some dataset image excites)."""
    names = ("robustness", "specificity_z", "target_probability", "judge_probability", "activation_vs_dataset")
    return {f"{name}_mean": float(np.mean([row[name] for row in scores if name in row]))
            for name in names if any(name in row for row in scores)}


def seeds_alike(batch: np.ndarray, classes: int) -> float:
    """How alike a class's pictures are from seed to seed, for a batch laid out as `shapes` lays it out: the
    size of the correlation of every two seeds' pictures of a class (pixels less each picture's mean), averaged
    over pairs and classes. Near 0 for pictures drawn independently; near 1 where every seed draws the same
    picture, which a judge's share does not see (a start from the dataset's examples pulls it up). The size, not
    the sign: a picture and its negative share a layout, and a class drawn as a few facets, each the others'
    near-negative, would otherwise average to 0 as if every seed drew its own."""
    pictures = np.asarray(batch, np.float64).reshape(-1, classes, np.asarray(batch[0]).size)  # seeds x classes
    centred = pictures - pictures.mean(axis=2, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=2, keepdims=True)
    correlations = np.einsum("sck,tck->cst", unit, unit)
    return float(np.abs(correlations[:, ~np.eye(len(unit), dtype=bool)]).mean())


def shapes(factory: ModelFactory, seeds: tuple[int, ...] = SEEDS) -> tuple[dict, dict]:
    """Part 1: every class x seed of a method in one batch (batching never changes a picture)."""
    classes = registry.builtin_info(MODEL).classes
    judge = registry.JUDGES[MODEL]
    judged_as, names = factory.model(judge).classify, registry.builtin_info(MODEL).class_names
    same_generator = factory.model(SAME_GENERATOR_MODEL).classify
    second_judge = factory.model(SECOND_JUDGE).classify
    ranked = ranking(factory, None)
    summary, pictures = {}, {}
    for method in METHODS:
        iterations = METHOD_DEFAULTS[method].iterations
        batch, rows = run(factory, MODEL, None, method, list(range(classes)) * len(seeds),
                          [seed for seed in seeds for _ in range(classes)], iterations, ranked)
        pictures[method] = batch[:classes]  # the first seed's
        assert all(row["judge"] == judge for row in rows)
        agrees = np.array([row["judge_agrees"] for row in rows]).reshape(len(seeds), classes)
        same = same_generator(batch).numpy().argmax(axis=1) == np.tile(np.arange(classes), len(seeds))
        second = recognized(second_judge(batch).numpy(), classes)
        summary[method] = {  # the shares are means of per-class shares, as goal() reads them: printed alike
            "iterations": iterations, "judge": judge, "transferability": float(np.mean(agrees.mean(axis=0))),
            "same_generator_model": SAME_GENERATOR_MODEL, "same_generator_agreement": float(same.mean()),
            **means(rows), "per_class_transferability": agrees.mean(axis=0).tolist(),
            "misses": _misses(judged_as(batch).numpy(), classes, names),
            "second_judge": SECOND_JUDGE, "second_judge_transferability": float(np.mean(second.mean(axis=0))),
            "second_judge_per_class": second.mean(axis=0).tolist(), "seeds_alike": seeds_alike(batch, classes),
        }
        both = judges_mean(summary[method]["per_class_transferability"], summary[method]["second_judge_per_class"])
        print(f"  {MODEL} {method:16s} {iterations:4d} iterations: transferability to {judge} "
              f"{summary[method]['transferability']:.0%} (to {SECOND_JUDGE} "
              f"{summary[method]['second_judge_transferability']:.0%}; their mean {both.mean():.1%}, its weakest "
              f"class {both.min():.1%}; to {SAME_GENERATOR_MODEL} "
              f"{summary[method]['same_generator_agreement']:.0%}), seeds alike "
              f"{summary[method]['seeds_alike']:.2f}, robustness "
              f"{summary[method]['robustness_mean']:.2f}, activation_vs_dataset "
              f"{summary[method]['activation_vs_dataset_mean']:.2f}; the judge's misses: "
              + (", ".join(f"{name} as {', '.join(seen)}" for name, seen in summary[method]["misses"].items())
                 or "none"), flush=True)
    return summary, pictures


def recognized(verdicts: np.ndarray, classes: int) -> np.ndarray:
    """Seeds x classes: whether a judge's probabilities for a batch laid out as `shapes` lays it out (every
    class of one seed, then the next seed's) give each picture its class at least scoring.JUDGE_SEES."""
    targets = np.tile(np.arange(classes), len(verdicts) // classes)
    return (verdicts[np.arange(len(targets)), targets] >= scoring.JUDGE_SEES).reshape(-1, classes)


def judges_mean(first_per_class, second_per_class) -> np.ndarray:
    """Per class, the mean of two judges' shares of its seeds: the goal's measure, as the outside figure is
    two judges' mean."""
    return np.mean([first_per_class, second_per_class], axis=0)


def _misses(verdicts: np.ndarray, classes: int, names: list[str]) -> dict[str, list[str]]:
    """For each class with a picture the judge did not recognize: the judge's top class, one per such picture."""
    targets = np.tile(np.arange(classes), len(verdicts) // classes)
    missed = ~recognized(verdicts, classes).ravel()
    top = verdicts.argmax(axis=1)
    return {names[c]: [names[v] for v in top[missed & (targets == c)]] for c in sorted(set(targets[missed]))}


def flat_pictures(factory: ModelFactory) -> dict[str, dict]:
    """The judge's class for a picture with nothing on it (black, grey, white): a class it gives these
    flatters every method's figure for that class."""
    info = registry.builtin_info(MODEL)
    names = info.class_names
    flat = np.stack([np.full(info.input_shape, level, np.float32) for level in (0.0, 127.5, 255.0)])
    verdicts = factory.model(registry.JUDGES[MODEL]).classify(flat).numpy()
    found = {f"{level:g}": {"class": names[int(row.argmax())], "probability": float(row.max())}
             for level, row in zip((0.0, 127.5, 255.0), verdicts)}
    print("  the judge on flat pictures (black, grey, white): " + ", ".join(
        f"{verdict['class']} ({verdict['probability']:.2f})" for verdict in found.values()), flush=True)
    return found


def shapes_channels(factory: ModelFactory) -> dict:
    """Part 2: channel CHANNEL of every shapes_cnn conv layer, 10 seeds, each method at its defaults."""
    summary = {}
    for conv_id in range(len(registry.builtin_info(MODEL).conv_layers)):
        ranked = ranking(factory, conv_id)
        for method in METHODS:
            _, scores = run(factory, MODEL, conv_id, method, [CHANNEL] * len(SEEDS), list(SEEDS),
                            METHOD_DEFAULTS[method].iterations, ranked)
            summary[f"conv{conv_id}/{method}"] = _printed(f"{MODEL} conv {conv_id} channel {CHANNEL} {method:16s}",
                                                          means(scores))
    return summary


def inception(factory: ModelFactory) -> dict:
    summary = {}
    for conv_id in (5, 50, 93):
        for method in METHODS:
            _, scores = run(factory, "inception_v3_untrained", conv_id, method, [1, 2], [0, 1], INCEPTION_ITERATIONS)
            summary[f"conv{conv_id}/{method}"] = _printed(f"inception_v3_untrained conv {conv_id:2d} {method:16s}",
                                                          means(scores))
    return summary


def _printed(label: str, entry: dict) -> dict:
    figures = "  ".join(f"{name.removesuffix('_mean')} {value:.2f}" for name, value in entry.items())
    print(f"  {label} {figures}", flush=True)
    return entry


def contact_sheet(pictures: dict) -> bytes:
    """Row c: class c by each method, left to right in METHODS order, enlarged to SHEET_TILE px or more."""
    classes, size = len(pictures[TUTORIAL]), max(pictures[TUTORIAL].shape[1:3])
    times = math.ceil(SHEET_TILE / size)
    return images.contact_sheet([pictures[method][c].repeat(times, axis=0).repeat(times, axis=1)
                                 for c in range(classes) for method in METHODS], columns=len(METHODS))


def below_tutorial(results: dict) -> list[str]:
    """Every measure on which a method scores below the tutorial's: docs/methods-and-quality.md must say why for
    each."""
    measures = [(f"{MODEL} classes", results[MODEL], "", ("transferability", "same_generator_agreement",
                                                          "robustness_mean", "activation_vs_dataset_mean"))]
    channels = ("robustness_mean", "specificity_z_mean", "activation_vs_dataset_mean")
    for part, names in (("shapes_cnn_channels", channels), ("inception_v3_untrained", channels[:2])):
        for where in sorted({key.split("/")[0] for key in results[part]}):
            measures.append((f"{part} {where}", results[part], f"{where}/", names))
    found = []
    for label, table, prefix, names in measures:
        for method in METHODS:
            for name in names:
                mine, tutorial = table[prefix + method].get(name), table[prefix + TUTORIAL].get(name)
                if mine is not None and tutorial is not None and mine < tutorial:
                    found.append(f"{label} {name}: {method} {mine:.2f} < {TUTORIAL} {tutorial:.2f}")
    return found


def goal(summary: dict) -> dict:
    """Whether the best method by both judges' mean reaches GOAL and its weakest class CLASS_GOAL, by the judge
    alone and by that mean; printed."""
    both = {method: judges_mean(summary[method]["per_class_transferability"], summary[method]["second_judge_per_class"])
            for method in METHODS}
    best = max(METHODS, key=lambda method: both[method].mean())
    judge = _goal_line(f"goal: {best} recognized", summary[best]["per_class_transferability"])
    two_judges = _goal_line(f"  by the mean of {summary[best]['judge']} and {SECOND_JUDGE}: recognized", both[best])
    return {"best_method": best, **judge, "goal": GOAL, "class_goal": CLASS_GOAL, "two_judges": two_judges}


def _goal_line(lead: str, per_class) -> dict:
    """The overall share and weakest class of per-class shares against GOAL and CLASS_GOAL; printed."""
    share, weakest = float(np.mean(per_class)), float(np.min(per_class))
    met = share >= GOAL and weakest >= CLASS_GOAL - 1e-9
    print(f"{lead} {share:.0%} of the time at its defaults, its weakest class {weakest:.0%} of its seeds: "
          f"{'met' if met else 'not met'} ({GOAL:.0%}, each class {CLASS_GOAL:.0%})")
    return {"transferability": share, "weakest_class": weakest, "met": met}


def other_seeds(first: int, last: int) -> int:
    """Part 1 alone on seeds first..last, printed, nothing written: the defaults on seeds no choice has seen
    (`make quality-defaults` and `make quality` both look at theirs)."""
    seeds = tuple(range(first, last + 1))
    print(f"{MODEL}: 10 classes x {len(seeds)} seeds ({first}-{last}), judged by {registry.JUDGES[MODEL]} and "
          f"{SECOND_JUDGE}", flush=True)
    goal(shapes(ModelFactory(), seeds)[0])
    return 0


def seed_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"{text!r}: give FIRST-LAST, two seeds 0 or more, e.g. 500-519")
    return int(first), int(last)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m quality.run", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", metavar="FIRST-LAST", type=seed_range,
                        help="part 1 alone on these seeds (e.g. 500-519), printed, nothing written")
    seeds = parser.parse_args().seeds
    if seeds is not None:
        return other_seeds(*seeds)
    began = time.perf_counter()
    factory = ModelFactory()
    defaults = {method: vars(METHOD_DEFAULTS[method]) for method in METHODS}
    print(f"defaults (contract.METHOD_DEFAULTS): {defaults}")
    print(f"1. {MODEL}: 10 classes x {len(SEEDS)} seeds, judged by {registry.JUDGES[MODEL]} and {SECOND_JUDGE} "
          f"(and by {SAME_GENERATOR_MODEL}, same generator)", flush=True)
    shapes_summary, pictures = shapes(factory)
    judge_on_flat = flat_pictures(factory)
    print(f"2. held-out robustness, specificity and activation_vs_dataset: {MODEL} channel {CHANNEL} of each conv "
          f"layer; inception_v3_untrained at {INCEPTION_ITERATIONS} iterations", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "defaults": defaults, MODEL: shapes_summary,
               "shapes_cnn_channels": shapes_channels(factory), "inception_v3_untrained": inception(factory),
               "inception_iterations": INCEPTION_ITERATIONS, "judge_on_flat_pictures": judge_on_flat,
               "class_names": list(registry.builtin_info(MODEL).class_names), "seconds": None}
    results["goal"] = goal(shapes_summary)
    results["below_tutorial"] = below_tutorial(results)
    (ROOT / "quality" / "contact_sheet.png").write_bytes(contact_sheet(pictures))
    results["seconds"] = time.perf_counter() - began
    (ROOT / "quality" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("below the tutorial's method:" + "".join(f"\n  {line}" for line in results["below_tutorial"]))
    print(f"wrote quality/results.json and quality/contact_sheet.png in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
