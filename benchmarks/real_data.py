"""Real data (issue 14): fedray against the central scikit-learn baselines of the examples.

Three acceptance checks, each one table, every fedray number from a real run
(``Orchestrator(config, out_dir).run()`` on one local Ray with 2 CPUs; the participants
land on a pool of 2 workers):

1. Hospitals (``examples/hospitals.yaml``: 5 site tables in raw units, text columns, ~5%
   missing, label skew). Central: ``LogisticRegression`` on the pooled site rows as in
   ``examples/hospitals/baseline.py``. fedray: FedAvg with ``preprocess`` (the example as
   it is); the same with ``privacy: {secure_aggregation: true}``; and FedAvg without
   ``preprocess`` on copies of the tables that raw loading accepts (text columns
   ``scanner`` and ``referral`` dropped, each missing value filled with that table's own
   column median, the test table's with its own), where fedray should warn about the
   feature scales. All are scored on ``examples/hospitals/test.csv`` (114 rows, one row
   is 0.9 points of accuracy). Target: FedAvg + preprocess within 2 accuracy points of
   the central model.
2. Regression. Traffic (``examples/traffic.yaml`` with ``strategy: fedavg`` and no site
   hold-out, so both sides train on every city row) against the central ``Ridge`` and
   ``MLPRegressor`` of ``examples/traffic/baseline.py``, scored on
   ``examples/traffic/test.csv``: the example's training settings, and one modest
   variant (lr 0.002, 80 rounds) picked from a few tries on that same test table when
   the cities had 60 days of rows each (there is no validation split). Two diagnostics with the example's settings: the same MLP
   trained by one participant on the pooled city rows (what fedray's model reaches
   centrally), and FedAvg over a seeded shuffle of those rows into 5 equal sites (the
   federation without the cities' skew). And scikit-learn's bundled diabetes table in
   raw units (``load_diabetes(scaled=False)``, 442 rows): fedray runs ``dataset: {name:
   table, test_fraction: 0.2, partition: {kind: iid}}``, 4 sites on iid shards of the
   seeded 80%, scored on the other 20%; the central models train on the same 80%
   (``actors.data.load.pooled_table``), all score on the same 20%. fedray runs a linear model
   (MLP with no hidden layer) and an MLP [32]. Target: FedAvg within 0.05 R² of the
   central model.
3. Personal heads on traffic (504 rows, 3 weeks, per city). Each city holds out
   ``test_fraction: 0.2`` of its own rows: participant k of a run has seed ``config.seed
   * 100003 + k`` and holds out the first ``round(0.2 n)`` rows of
   ``np.random.default_rng(seed).permutation(n)``, so at run seed 0 city k uses seed k.
   The preprocessing statistics leave each site's held-out rows out. FedPer and FedRep
   (``examples/traffic.yaml``, 40 aggregations of 2 local epochs; FedRep adds 1 head
   epoch per task) against two local-only baselines, both the same fedray MLP [64, 32]
   with Adam, 40 tasks of 2 epochs: ``local (federated prep)``, the same five-city run
   with ``strategy: local`` (nothing shared, but the preprocessing is still fitted from
   all cities' sums); and ``local (own prep)``, one one-participant fedray run per city
   whose table is a copy reordered so that the participant's hold-out picks exactly the
   rows city k holds out in the federation (checked below), with the preprocessing
   fitted on that city alone; the same again with ``lr: 0.002`` (``LOCAL_LR``), the better
   of the two lrs tried for the local models, so they are not judged at the federation's
   lr only.
   Each number is the R² that participant last reported on its own held-out rows (the
   ``r2`` of its last ``update`` row). ``sklearn local mlp`` is
   ``examples/traffic/baseline.py``'s MLP on the same rows, for reference. Repeated for
   run seeds 0, 1, 2 (the seed moves the hold-out rows and the initialisation).
   Target: each city beats its local-only model.

    python benchmarks/real_data.py            # everything (~5 min on 2 cores)
    python benchmarks/real_data.py --quick    # hospitals, traffic FedAvg, seed 0 without own-prep local runs

Prints one markdown table per check, the cities won per run seed, and for several seeds a
per-city summary. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import yaml
from pipe_table import pipe_table  # benchmarks/pipe_table.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.data.tables import pooled_table, split_rows  # noqa: E402
from orchestrator.cluster.specs import participant_specs  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.loop.run import Orchestrator  # noqa: E402

HOSPITALS = ROOT / "examples" / "hospitals"
TRAFFIC = ROOT / "examples" / "traffic"
LOCAL_LR = 0.002  # the local-only models' better lr of the two tried (the example's lr is 0.005)


def baseline_module(path: Path, name: str):
    """An example's ``baseline.py`` as a module (its models and scoring are the reference)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example(name: str) -> dict[str, Any]:
    """An example config as a dict, its relative paths made absolute."""
    config = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    for group in config["groups"]:
        group["data"]["path"] = str(ROOT / group["data"]["path"])
    config["evaluation"]["path"] = str(ROOT / config["evaluation"]["path"])
    return config


class Tee(io.TextIOBase):
    """Echo what the driver prints and keep a copy (to see whether a warning appeared)."""

    def __init__(self, out) -> None:
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def fedray(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """One run: its history, summary.json, what it printed and its wall seconds."""
    tee = Tee(sys.stdout)
    started = time.perf_counter()
    with contextlib.redirect_stdout(tee):
        history = Orchestrator(load_config(copy.deepcopy(config)), out_dir=out).run()
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    printed = tee.kept.getvalue()
    warned = "fedray: warning:" in printed and bool((history.event == "warning").any())
    print(f"  {config['name']}: {wall:.1f} s, stop: {summary['stop_reason']}", flush=True)
    return {"history": history, "summary": summary, "printed": printed, "warned": warned, "wall": wall}


def last_reports(history: pd.DataFrame, metric: str = "r2") -> pd.Series:
    """What each participant last reported on its own test split (its last update row)."""
    updates = history[history.event == "update"]
    return updates.groupby("participant")[metric].last()


# --------------------------------------------------------------------------- 1. hospitals
def hospitals(scratch: Path) -> pd.DataFrame:
    base = baseline_module(HOSPITALS / "baseline.py", "hospitals_baseline")
    sites = [pd.read_csv(HOSPITALS / f"site_{k}.csv") for k in range(5)]
    test = pd.read_csv(HOSPITALS / "test.csv")
    numeric = [c for c in test.columns if c not in [*base.CATEGORICAL, base.LABEL]]
    pooled = pd.concat(sites, ignore_index=True)
    central = base.make_model(numeric).fit(pooled.drop(columns=base.LABEL), pooled[base.LABEL])
    rows = [{"model": "central sklearn LogisticRegression", **base.scores(central, test), "warning": "-"}]

    config = example("hospitals")
    runs = {"fedray FedAvg + preprocess": config,
            "fedray FedAvg + preprocess + secure aggregation":
                config | {"name": "hospitals-secagg", "privacy": {"secure_aggregation": True}}}
    # without preprocess: tables raw loading accepts (no text columns, no missing values)
    raw_dir = scratch / "hospitals-raw"
    raw_dir.mkdir()
    for name, frame in [*((f"site_{k}.csv", s) for k, s in enumerate(sites)), ("test.csv", test)]:
        frame = frame.drop(columns=base.CATEGORICAL)
        frame.fillna(frame.median(numeric_only=True)).to_csv(raw_dir / name, index=False)
    raw = copy.deepcopy(config)
    raw.pop("preprocess")
    raw["name"] = "hospitals-raw"
    raw["groups"][0]["data"]["path"] = str(raw_dir / "site_{index}.csv")
    raw["evaluation"]["path"] = str(raw_dir / "test.csv")
    runs["fedray FedAvg, no preprocess (raw units)"] = raw

    for label, cfg in runs.items():
        run = fedray(cfg, scratch / cfg["name"])
        s = run["summary"]
        rows.append({"model": label, "accuracy": s["final_accuracy"], "macro_f1": s["final_macro_f1"],
                     "auroc": s["final_auroc"], "warning": "printed" if run["warned"] else "none",
                     "wall s": round(run["wall"], 1)})
    table = pd.DataFrame(rows).set_index("model")
    table.insert(1, "acc - central (points)", 100 * (table.accuracy - table.accuracy.iloc[0]))
    return table


# --------------------------------------------------------------------------- 2. regression
def traffic_fedavg(scratch: Path, traffic_base, quick: bool) -> pd.DataFrame:
    cities = [pd.read_csv(TRAFFIC / f"city_{k}.csv") for k in range(5)]
    test = pd.read_csv(TRAFFIC / "test.csv")
    central = traffic_base.central_table(cities, test)
    rows = [{"dataset": "traffic", "model": f"central sklearn {k.split()[1]}", "r2": central.loc[k, "r2"],
             "mse": central.loc[k, "mse"], "mae": central.loc[k, "mae"]} for k in central.index]
    config = example("traffic")
    config["strategy"] = {"name": "fedavg"}
    config["groups"][0]["data"].pop("test_fraction")  # train on every row, as the central models do
    train = config["groups"][0]["train"]
    # diagnostics: the same MLP trained on the pooled rows by one participant, and FedAvg
    # over a seeded shuffle of the same rows into 5 equal sites (no city skew)
    pooled = pd.concat(cities, ignore_index=True)
    pooled.to_csv(scratch / "traffic_pooled.csv", index=False)
    shuffled = pooled.sample(frac=1.0, random_state=0).reset_index(drop=True)
    for k, part in enumerate(np.array_split(np.arange(len(shuffled)), 5)):
        shuffled.iloc[part].to_csv(scratch / f"traffic_iid_{k}.csv", index=False)
    variants = [("traffic-fedavg", "fedray FedAvg, 5 cities", {}, {})]
    if not quick:
        variants += [
            ("traffic-fedavg-lr002", "fedray FedAvg, 5 cities", {"lr": 0.002}, {"stop": {"max_aggregations": 80}}),
            ("traffic-one-participant", "fedray, 1 participant on the pooled rows", {},
             {"path": str(scratch / "traffic_pooled.csv"), "count": 1}),
            ("traffic-fedavg-iid", "fedray FedAvg, 5 iid shuffled sites", {},
             {"path": str(scratch / "traffic_iid_{index}.csv")}),
        ]
    for name, label, train_change, change in variants:
        cfg = copy.deepcopy(config) | {"name": name}
        group = cfg["groups"][0]
        group["train"] = train | train_change
        if "path" in change:
            group["data"]["path"] = change["path"]
        group["count"] = change.get("count", group["count"])
        cfg["stop"] = change.get("stop", cfg["stop"])
        run = fedray(cfg, scratch / name)
        s = run["summary"]
        settings = (f"MLP [64, 32], Adam lr {group['train']['lr']}, {group['train']['local_epochs']} epochs x "
                    f"{cfg['stop']['max_aggregations']} rounds")
        rows.append({"dataset": "traffic", "model": f"{label}; {settings}", "r2": s["final_r2"],
                     "mse": s["final_mse"], "mae": s["final_mae"], "wall s": round(run["wall"], 1)})
    return pd.DataFrame(rows)


def diabetes(scratch: Path, traffic_base) -> pd.DataFrame:
    from sklearn.datasets import load_diabetes
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    path = scratch / "diabetes.csv"
    load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
    table = {"name": "table", "path": str(path), "label_column": "target", "test_fraction": 0.2, "seed": 0,
             "partition": {"kind": "iid"}}
    dataset = load_config({"name": "diabetes", "task": "regression", "groups": [{"name": "s", "count": 1}],
                           "dataset": table}).dataset
    train, test = pooled_table(dataset)  # fedray's seeded split: what the sites split and the driver scores on
    where = f"diabetes ({len(train)} train / {len(test)} test rows)"
    rows = []
    x, y = test.drop(columns="target"), test["target"]
    for kind in ("ridge", "mlp"):
        pred = traffic_base.fit(kind, train.rename(columns={"target": traffic_base.TARGET})).predict(x)
        rows.append({"dataset": where, "model": f"central sklearn {kind}", "r2": r2_score(y, pred),
                     "mse": mean_squared_error(y, pred), "mae": mean_absolute_error(y, pred)})
    for hidden, lr in (([], 0.05), ([32], 0.005)):
        name = f"diabetes-fedavg-{'linear' if not hidden else 'mlp'}"
        cfg = {"name": name, "seed": 0, "task": {"kind": "regression", "loss": "mse"},
               "preprocess": {"standardize": True, "standardize_target": True},
               "dataset": table,  # 4 iid shards of the training rows; evaluation on the test rows
               "groups": [{"name": "site", "count": 4, "model": {"name": "mlp", "hidden": hidden},
                           "train": {"local_epochs": 2, "batch_size": 16, "lr": lr, "optimizer": "adam"}}],
               "strategy": {"name": "fedavg"}, "schedule": {"mode": "sync"}, "stop": {"max_aggregations": 40}}
        run = fedray(cfg, scratch / name)
        s = run["summary"]
        rows.append({"dataset": where,
                     "model": f"fedray FedAvg + preprocess, {'linear' if not hidden else 'MLP [32]'} (Adam lr {lr})",
                     "r2": s["final_r2"], "mse": s["final_mse"], "mae": s["final_mae"],
                     "wall s": round(run["wall"], 1)})
    return pd.DataFrame(rows)


def regression(scratch: Path, quick: bool) -> pd.DataFrame:
    traffic_base = baseline_module(TRAFFIC / "baseline.py", "traffic_baseline")
    warnings.filterwarnings("ignore", module="sklearn")  # MLPRegressor max_iter=500 is the baseline's spec
    parts = [traffic_fedavg(scratch, traffic_base, quick)] + ([] if quick else [diabetes(scratch, traffic_base)])
    table = pd.concat(parts, ignore_index=True)
    for _, rows in table.groupby("dataset", sort=False):
        central = rows[rows.model.str.startswith("central")].set_index("model").r2
        for i in rows.index:
            table.loc[i, "r2 - central ridge"] = table.r2[i] - central.filter(like="ridge").iloc[0]
            table.loc[i, "r2 - central mlp"] = table.r2[i] - central.filter(like="mlp").iloc[0]
    return table.set_index(["dataset", "model"])


# --------------------------------------------------------------------------- 3. personal heads
def personal_heads(scratch: Path, seed: int, quick: bool) -> pd.DataFrame:
    """Per city, at run seed ``seed``: what each method's participant last reported on
    its own held-out rows."""
    traffic_base = baseline_module(TRAFFIC / "baseline.py", "traffic_baseline")
    from sklearn.metrics import r2_score

    base = example("traffic") | {"seed": seed}
    fraction = base["groups"][0]["data"]["test_fraction"]
    seeds = [spec.seed for spec, _ in participant_specs(load_config(base), "seeds")]
    cities = [pd.read_csv(TRAFFIC / f"city_{k}.csv") for k in range(5)]
    columns: dict[str, np.ndarray] = {}
    for label, strategy in (("FedPer", {"name": "fedper"}), ("FedRep", {"name": "fedrep"}),
                            ("local (federated prep)", {"name": "local"})):
        cfg = copy.deepcopy(base) | {"name": f"traffic-{strategy['name']}-seed-{seed}", "strategy": strategy}
        reports = last_reports(fedray(cfg, scratch / cfg["name"])["history"])
        columns[label] = reports.loc[[f"city-{k}" for k in range(5)]].to_numpy()

    own: dict[str, list[float]] = {"local (own prep)": [], f"local (own prep, lr {LOCAL_LR})": []}
    sk = []
    for k, city in enumerate(cities):
        n, n_test = len(city), int(round(fraction * len(city)))
        order_k = np.random.default_rng(seeds[k]).permutation(n)  # city k's hold-out in the federation
        train, held = city.iloc[order_k[n_test:]], city.iloc[order_k[:n_test]]
        pred = traffic_base.fit("mlp", train).predict(held.drop(columns=traffic_base.TARGET))
        sk.append(r2_score(held[traffic_base.TARGET], pred))
        if quick:
            continue
        # a copy whose hold-out under a one-participant run's seed is city k's hold-out here
        single = load_config(base | {"groups": [base["groups"][0] | {"count": 1}]})
        seed_1 = participant_specs(single, "seeds")[0][0].seed
        order_1 = np.random.default_rng(seed_1).permutation(n)
        index = np.empty(n, np.int64)
        index[order_1] = order_k
        reordered = city.iloc[index].reset_index(drop=True)
        kept, tested = split_rows(n, fraction, seed_1)
        rows = reordered.to_numpy()
        assert np.array_equal(rows[tested], held.to_numpy()) and np.array_equal(
            rows[kept], train.to_numpy()), "hold-out rows differ"
        path = scratch / f"city_{k}_seed_{seed}.csv"
        reordered.to_csv(path, index=False)
        for label, lr in zip(own, (base["groups"][0]["train"]["lr"], LOCAL_LR)):
            cfg = copy.deepcopy(base) | {"name": f"traffic-local-city-{k}-lr-{lr}-seed-{seed}",
                                         "strategy": {"name": "local"}}
            cfg["groups"][0] |= {"count": 1}
            cfg["groups"][0]["data"]["path"] = str(path)
            cfg["groups"][0]["train"]["lr"] = lr
            own[label].append(float(last_reports(fedray(cfg, scratch / cfg["name"])["history"]).iloc[0]))

    table = pd.DataFrame({"run seed": seed, "city": [f"city_{k}" for k in range(5)], "participant seed": seeds,
                          "held-out rows": [int(round(fraction * len(c))) for c in cities]})
    for label, values in own.items():
        if values:
            table[label] = values
    table["local (federated prep)"] = columns["local (federated prep)"]
    table["FedPer"] = columns["FedPer"]
    table["FedRep"] = columns["FedRep"]
    reference = "local (own prep)" if own["local (own prep)"] else "local (federated prep)"
    for method in ("FedPer", "FedRep"):
        table[f"{method} - {reference}"] = table[method] - table[reference]
    table["sklearn local mlp"] = sk
    return table


def across_seeds(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per city: the mean R² over the run seeds, and in how many seeds each method beat
    the local-only models."""
    frame = pd.concat(tables, ignore_index=True)
    r2 = [c for c in frame.columns if c.startswith(("local", "Fed", "sklearn")) and " - " not in c]
    out = frame.groupby("city")[r2].mean().add_prefix("mean ")
    for method in ("FedPer", "FedRep"):
        for reference in [c for c in r2 if c.startswith("local")]:
            wins = (frame[method] > frame[reference]).groupby(frame.city).sum()
            out[f"{method} > {reference}"] = [f"{w}/{len(tables)}" for w in wins.loc[out.index]]
    return out.reset_index()


def wins_per_seed(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per run seed: in how many cities each method beat each local-only model."""
    rows = []
    for table in tables:
        references = [c for c in table.columns if c.startswith("local")]
        row = {"run seed": int(table["run seed"].iloc[0])}
        for method in ("FedPer", "FedRep"):
            for reference in references:
                row[f"{method} > {reference}"] = f"{int((table[method] > table[reference]).sum())}/{len(table)}"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table: R² and the like to 3 decimals, values from 10 to 100, seconds and
    accuracy points to 0.1, larger values to whole units, blanks for missing values."""
    def cell(column: str, value: Any) -> str:
        if isinstance(value, float | np.floating):
            if value != value:
                return ""
            if column == "wall s" or "points" in column or 10 <= abs(value) < 100:
                return f"{value:.1f}"
            return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"
        return str(value)

    return pipe_table(frame, cell)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="no diabetes, no traffic diagnostics, no per-city local runs, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="run seeds for the personal-heads check (default 0 1 2; --quick: 0)")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    os.chdir(ROOT)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            print("1. hospitals", flush=True)
            one = hospitals(scratch)
            print("2. regression", flush=True)
            two = regression(scratch, args.quick)
            print("3. personal heads (traffic, R^2 on each city's own held-out rows)", flush=True)
            three = [personal_heads(scratch, seed, args.quick) for seed in seeds]
    finally:
        ray.shutdown()
    print("\n1. Hospitals, scored on examples/hospitals/test.csv (114 rows)\n")
    print(markdown(one.reset_index()))
    print("\n2. Regression: FedAvg vs central models on the same held-out rows\n")
    print(markdown(two.reset_index()))
    print("\n3. Personal heads on traffic: R^2 each city last reported on its own held-out 20%\n")
    print(markdown(pd.concat(three, ignore_index=True)))
    print("\nCities won, per run seed:\n")
    print(markdown(wins_per_seed(three)))
    if len(three) > 1:
        print(f"\nOver run seeds {seeds}:\n")
        print(markdown(across_seeds(three)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
