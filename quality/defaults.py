"""`make quality-defaults`: each method's defaults, swept and scored, so a default job gives the method's good picture.

A setting is Adam's learning rate, how hard the transforms move the picture (a multiple of lucid's
amounts, transform.Moves.lucid) and the iterations. Per method (robust and maco) the sweep is:
1. each rate of RATES[method], at lucid's moves (strength 1);
2. each strength of STRENGTHS at the rate step 1 chose;
3. for maco, which keeps a magnitude spectrum, the other spectrum (contract.MAGNITUDES: 1/f, or the mean of
   the model's dataset) at the rate and strength steps 1 and 2 chose;
4. the other class objective (contract.CLASS_OBJECTIVES: the class's logit, or its log-probability) at the
   setting steps 1-3 chose. Steps 1-3 climb the objective the table holds; only the class pictures differ;
5. a scheduled rate at the setting steps 1-4 chose: its rate for contract.SETTLE_AFTER steps, then SETTLED of
   it (steps 1-4 keep one rate throughout). Its pictures differ only after SETTLE_AFTER steps, so only the
   counts of ITERATIONS beyond it are its rows;
6. a coarse start at the setting steps 1-5 chose: for its first COARSE steps the picture holds no frequency above
   contract.COARSE_CYCLES cycles per image (steps 1-5 start with every frequency);
7. for a method of contract.START_METHODS, the dataset's starts at the setting steps 1-6 chose: each picture
   starts from the mean of the dataset's contract.START_EXAMPLES best examples of its class or channel ("dataset"),
   or of its seed's facet of them ("facets", dataset_starts.py), with contract.START_NOISE times its seed's noise
   on it (steps 1-6 start from the noise alone). Every row also gives the judges' mean of the starts themselves
   (`at 0`), before any step: what the judges see of the dataset.
Every row also gives how alike a class's pictures are from seed to seed (`alike`, quality.run.seeds_alike), which
no judge's share sees; the rule does not read it.
Every setting runs ITERATIONS[-1] iterations once and its pictures are read at each count of ITERATIONS on
the way: a step does not depend on how many follow, so the picture after 30 steps of a 200-step run is a
30-iteration job's, and the iterations cost nothing more. This coordinate search (25 runs; docs/methods-and-quality.md
says how long it takes) replaces the full product of rates, strengths, spectra, class objectives, schedules and
starts (681 runs).
gradient_ascent has no rate and no transforms; its iterations are read the same way, for comparison, and its
defaults stay the tutorial's (30, climbing the logit), so a job that leaves iterations out keeps its id and its
picture.

Scored as `make quality` scores the methods, on seeds it does not use (SEEDS; it uses 0-9):
- shapes_cnn, 10 classes x 20 seeds: whether the frozen judge (registry.JUDGES: shapes_judge) gives the target
  class at least scoring.JUDGE_SEES (transferability), whether the frozen second judge (quality.run's
  SECOND_JUDGE, trained on clean images) does, the two judges' mean overall and per class (the issue's outside
  figure is two judges' mean, one of them clean), and the held-out robustness;
- channel CHANNEL of shapes_cnn's conv_id 2 and 3, 20 seeds each: held-out robustness and specificity.
The chosen setting of a method (`choose`) is, by the two judges' mean, among the settings whose every class
is recognized on at least CLASS_GOAL of the seeds (all settings, when none does), and of those the ones whose
weakest class is within one seed of the best weakest class, the one with the fewest iterations among those
within CLOSE of their best share, then the most robust: a class the default never draws is a miss no overall
figure makes up for, transferability is the measure of a class picture a person would recognize, and within
one picture in 50 of it, a shorter job is worth more than noise. The weakest class comes before the
iterations because the fewest iterations alone chose settings that only just reached CLASS_GOAL on these
seeds and fell below it on others (docs/methods-and-quality.md). Where the table's setting passes
the same filter, a rate or strength other than its must beat it by more than CLOSE: they are not in the job id
(the iterations are), so changing them changes the picture every job id already made stands for.
Writes quality/defaults.json and prints the table; exits 1 when contract.METHOD_DEFAULTS does not hold the
chosen settings.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featurevis import registry, scoring
from featurevis.contract import CLASS_OBJECTIVES, MAGNITUDES, METHOD_DEFAULTS, SETTLE_AFTER, START_METHODS, STARTS
from featurevis.factory import ModelFactory
from featurevis.step_cache import target_network
from featurevis.optvis import methods, objectives, render, transform
from quality.run import CLASS_GOAL, SECOND_JUDGE, judges_mean, recognized, seeds_alike, start_arguments

ROOT = Path(__file__).resolve().parent.parent

MODEL = "shapes_cnn"
SEEDS = tuple(range(100, 120))  # make quality uses 0-9
ITERATIONS = (30, 50, 100, 200)
RATES = {"robust": (0.02, 0.05, 0.1), "maco": (0.05, 0.2, 0.5, 1.0)}
STRENGTHS = (0.0, 0.5, 1.0, 1.5, 2.0)
CONV_IDS = (2, 3)  # conv_id 1's channels average near 0, where robustness, a ratio, is noise
CHANNEL = 2  # make quality climbs channel 1
CLOSE = 0.02  # one picture in 50
SETTLED = 0.2  # the scheduled rate's share of the rate after SETTLE_AFTER steps: 0.1, then 0.02 was the lead tried
COARSE = 25  # the coarse start's steps (contract.COARSE_CYCLES): 25 was the lead tried


class Setting(NamedTuple):
    """What one run of the sweep sets (None: the method has no such setting, or keeps it off); a row of the table
    is a setting's scores after one count of ITERATIONS."""

    method: str
    learning_rate: float | None = None
    moves: float | None = None  # the transforms' strength (transform.Moves.lucid)
    magnitude: str | None = None
    class_objective: str = "logit"
    settled_rate: float | None = None
    coarse_steps: int | None = None
    start: str = "noise"  # contract.STARTS

    @classmethod
    def held(cls, method: str) -> Setting:
        """The setting contract.METHOD_DEFAULTS holds for `method`."""
        defaults = METHOD_DEFAULTS[method]
        return cls(method, **{name: getattr(defaults, name) for name in cls._fields[1:]})

    @classmethod
    def of(cls, row: dict) -> Setting:
        return cls(**{name: row[name] for name in cls._fields})

    def step_settings(self, shape: tuple[int, int, int]) -> dict:
        """compile_step's keyword arguments for this setting, bar the dataset's spectrum (the caller's to read)."""
        if self.learning_rate is None:
            return {}
        return {"learning_rate": self.learning_rate, "settled_rate": self.settled_rate,
                "coarse_steps": self.coarse_steps, "moves": transform.Moves.lucid(max(shape[:2]), self.moves)}


def pictures(factory: ModelFactory, setting: Setting, conv_id: int | None, features: list[int],
             seeds: list[int]) -> tuple[dict[int, np.ndarray], np.ndarray, scoring.Probe]:
    """The batch's pictures after each count of ITERATIONS, from one run of a step compiled for `setting`."""
    loaded = factory.model(MODEL)
    network, objective = target_network(loaded, loaded.info.target_layer(conv_id),
                                        with_style=methods.BY_NAME[setting.method].needs_style,
                                        class_objective=setting.class_objective)
    shape = loaded.info.input_shape
    settings = setting.step_settings(shape)
    if setting.magnitude == "dataset":  # the dataset's spectrum, as a worker's "maco+dataset-..." step has it
        settings["magnitude"] = factory.dataset_magnitude(loaded.info)
    step = methods.BY_NAME[setting.method].compile_step(network, loaded.preprocess, objective, shape, **settings)
    weights = objectives.weights_matrix([{feature: 1.0} for feature in features], loaded.info.feature_count(conv_id))
    every = math.gcd(*ITERATIONS)
    start = step.start(seeds, *start_arguments(factory, loaded, conv_id, setting.start, features, seeds))
    frames = [step.pixels(start).numpy(), *render.run(step, seeds, weights, ITERATIONS[-1], state=start,
                                                        frame_every=every).frames]
    return ({count: frames[count // every] for count in (0, *ITERATIONS)}, weights,
            scoring.feature_probe(network, loaded.preprocess, shape, loaded.classes() if conv_id is None else None))


def scored(factory: ModelFactory, setting: Setting) -> list[dict]:
    """One row per count of ITERATIONS: the setting's scores after that many steps (with a `settled_rate`, only
    the counts beyond SETTLE_AFTER: before it the pictures are the same setting's at one rate)."""
    loaded = factory.model(MODEL)
    classes = loaded.info.classes
    second_judge = factory.model(SECOND_JUDGE).classify
    rows = {count: {**setting._asdict(), "iterations": count}
            for count in ITERATIONS if setting.settled_rate is None or count > SETTLE_AFTER}
    by_count, weights, probe = pictures(factory, setting, None, list(range(classes)) * len(SEEDS),
                                        [seed for seed in SEEDS for _ in range(classes)])
    starts_judged = judged(factory, by_count[0], classes, second_judge)  # one start for every count
    for count in rows:
        batch = by_count[count]
        scores = scoring.scores(scoring.read(probe, batch), batch, weights, True, factory.judge(MODEL))
        agrees = np.array([row["judge_agrees"] for row in scores]).reshape(len(SEEDS), classes)
        per_class, second = agrees.mean(axis=0), recognized(second_judge(batch).numpy(), classes).mean(axis=0)
        both = judges_mean(per_class, second)  # every share a mean of per-class shares, as make quality's
        rows[count].update(transferability=float(per_class.mean()), weakest_class=float(per_class.min()),
                           second_judge_transferability=float(second.mean()), judges_mean=float(both.mean()),
                           judges_mean_weakest_class=float(both.min()),
                           robustness=float(np.mean([row["robustness"] for row in scores])),
                           start_judges_mean=starts_judged,
                           seeds_alike=seeds_alike(batch, classes))
    for conv_id in CONV_IDS:
        by_count, weights, probe = pictures(factory, setting, conv_id, [CHANNEL] * len(SEEDS), list(SEEDS))
        for count in rows:
            batch = by_count[count]
            scores = scoring.scores(scoring.read(probe, batch), batch, weights, False)
            rows[count].update({f"conv{conv_id}_robustness": float(np.mean([row["robustness"] for row in scores])),
                                f"conv{conv_id}_specificity_z": float(np.mean([row["specificity_z"]
                                                                               for row in scores]))})
    for row in rows.values():
        print(line(row), flush=True)
    return list(rows.values())


def judged(factory: ModelFactory, batch: np.ndarray, classes: int, second_judge) -> float:
    """The two judges' mean of a batch of class pictures, in seed-major order."""
    first = recognized(factory.judge(MODEL)[1](batch).numpy(), classes).mean(axis=0)
    return float(judges_mean(first, recognized(second_judge(batch).numpy(), classes).mean(axis=0)).mean())


def choose(rows: list[dict]) -> dict:
    """A method's setting, by the rule the module's docstring gives."""
    rows = [row for row in rows if row["judges_mean_weakest_class"] >= CLASS_GOAL - 1e-9] or rows
    weakest = max(row["judges_mean_weakest_class"] for row in rows)
    rows = [row for row in rows if row["judges_mean_weakest_class"] >= weakest - 1 / len(SEEDS) - 1e-9]
    best = max(row["judges_mean"] for row in rows)
    close = [row for row in rows if row["judges_mean"] >= best - CLOSE - 1e-9]
    held = Setting.held(rows[0]["method"])
    kept = [row for row in close if Setting.of(row) == held]
    return min(kept or close, key=lambda row: (row["iterations"], -row["robustness"]))


def sweep(factory: ModelFactory, method: str) -> list[dict]:
    """Step 1, the rates at lucid's moves; step 2, the other strengths at the rate step 1 chose; step 3, for a
    method that keeps a magnitude spectrum, the other spectra at the rate and strength chosen so far; step 4, the
    other class objectives at the setting chosen so far; step 5, that setting with its rate settling to SETTLED of
    it after SETTLE_AFTER steps; step 6, the setting chosen so far starting coarse for COARSE steps; step 7, for a
    method of START_METHODS, the setting chosen so far starting from the dataset, one mean or its facets."""
    plain = Setting.held(method)._replace(settled_rate=None, coarse_steps=None, start="noise")
    rows = [row for rate in RATES[method] for row in scored(factory, plain._replace(learning_rate=rate, moves=1.0))]
    rate = choose(rows)["learning_rate"]
    rows += [row for strength in STRENGTHS if strength != 1.0
             for row in scored(factory, plain._replace(learning_rate=rate, moves=strength))]
    if plain.magnitude is not None:
        chosen = Setting.of(choose(rows))
        rows += [row for magnitude in MAGNITUDES if magnitude != chosen.magnitude
                 for row in scored(factory, chosen._replace(magnitude=magnitude))]
    chosen = Setting.of(choose(rows))
    rows += [row for objective in CLASS_OBJECTIVES if objective != chosen.class_objective
             for row in scored(factory, chosen._replace(class_objective=objective))]
    chosen = Setting.of(choose(rows))
    rows += scored(factory, chosen._replace(settled_rate=round(SETTLED * chosen.learning_rate, 6)))
    rows += scored(factory, Setting.of(choose(rows))._replace(coarse_steps=COARSE))
    if method in START_METHODS:
        chosen = Setting.of(choose(rows))
        rows += [row for start in STARTS if start != chosen.start
                 for row in scored(factory, chosen._replace(start=start))]
    return rows


def line(row: dict) -> str:
    rate = "-" if row["learning_rate"] is None else f"{row['learning_rate']:g}"
    if row["settled_rate"] is not None:
        rate += f">{row['settled_rate']:g}"
    moves = "-" if row["moves"] is None else f"{row['moves']:g}"
    coarse = "-" if row["coarse_steps"] is None else str(row["coarse_steps"])
    start = {"noise": "noise", "dataset": "data", "facets": "facet"}[row["start"]]
    magnitude = row["magnitude"] or "-"
    objective = {"logit": "logit", "log_probability": "log p"}[row["class_objective"]]
    convs = "  ".join(f"{row[f'conv{conv_id}_robustness']:6.2f} {row[f'conv{conv_id}_specificity_z']:5.2f}"
                      for conv_id in CONV_IDS)
    return (f"{row['method']:16s} {rate:>9} {moves:>5} {coarse:>6} {start:>5} {magnitude:>8} {objective:>6} "
            f"{row['iterations']:5d} {row['start_judges_mean']:6.0%} {row['seeds_alike']:5.2f} "
            f"{row['transferability']:7.0%} {row['weakest_class']:7.0%} {row['second_judge_transferability']:7.0%} "
            f"{row['judges_mean']:7.0%} {row['judges_mean_weakest_class']:7.0%} {row['robustness']:7.2f}  {convs}")


def main() -> int:
    began = time.perf_counter()
    factory = ModelFactory()
    print(f"{MODEL}, seeds {SEEDS[0]}-{SEEDS[-1]}; judged by {registry.JUDGES[MODEL]} and {SECOND_JUDGE} (clean), "
          f"both judges' mean and its weakest class (at 0: the judges' mean of the starts, before a step; alike: how "
          f"alike a class's pictures are from seed to seed, quality.run.seeds_alike); channel "
          f"{CHANNEL} of conv "
          f"{' and '.join(map(str, CONV_IDS))}: robustness and specificity z")
    print(f"{'method':16s} {'rate':>9} {'moves':>5} {'coarse':>6} {'start':>5} {'spectrum':>8} {'class':>6} {'iters':>5} "
          f"{'at 0':>6} {'alike':>5} {'judged':>7} "
          f"{'weakest':>7} {'clean':>7} {'mean':>7} {'weakest':>7} {'robust':>7}  "
          + "  ".join(f"{f'conv{conv_id} rob':>6} {'z':>5}" for conv_id in CONV_IDS))
    rows = scored(factory, Setting.held("gradient_ascent"))
    for method in RATES:
        rows += sweep(factory, method)
    chosen = {"gradient_ascent": next(row for row in rows if row["method"] == "gradient_ascent"
                                      and row["iterations"] == METHOD_DEFAULTS["gradient_ascent"].iterations)}
    chosen.update({method: choose([row for row in rows if row["method"] == method]) for method in RATES})
    differ = []
    for method, row in chosen.items():
        held = (METHOD_DEFAULTS[method].iterations, Setting.held(method))
        if held != (row["iterations"], Setting.of(row)):
            differ.append(method)
        print(f"chosen: {line(row)}   contract: {f'{held}, differs' if method in differ else 'the same'}")
    results = {"date": time.strftime("%Y-%m-%d"), "model": MODEL, "seeds": list(SEEDS), "channel": CHANNEL,
               "conv_ids": list(CONV_IDS), "rows": rows, "chosen": chosen, "seconds": time.perf_counter() - began}
    (ROOT / "quality" / "defaults.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote quality/defaults.json in {results['seconds']:.0f} s")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
