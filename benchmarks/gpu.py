"""GPU: many participants on one card, fedray against one process doing the same work.

Two workloads (the GPU issue's), each run four ways on the same card:

- ``16 x MLP 512-2048-2048-10``: 16 participants, 20,000 rows of 512 features each
  (Synthetic(1, 1), generated inside the participant), one epoch of batch 256 per task,
  SGD lr 0.05, sync FedAvg, 10 rounds.
- ``64 x MLP 64-128-10``: 64 participants, 500 rows of 64 features each, same schedule.

Ways: ``serial`` (one process, every participant's data already on the card, trained one
after another, averaged: the floor a hand-written loop reaches), ``one process batched``
(the same loop, but each round trains every participant at once with
``actors.training.batched.train_batched``: what the vmapped step gains with no Ray, no client halves
and no transfers, the ceiling for fedray batched), ``fedray pool`` (one
pool worker holding the whole card, ``batched: false``), ``fedray batched`` (the same
worker training its tasks together, ``batched: true``) and ``fedray auto`` (``batched: auto``:
the worker measures both at start and picks; its ``start s`` includes the measuring, its
``batched`` column says what it picked). Throughput is samples trained per
second of training rounds (start-up reported apart); GPU memory is the card's used memory
at its peak while the run goes (nvidia-smi, every 0.2 s), for fedray all processes together.

    python benchmarks/gpu.py           # on a CUDA machine; skips cleanly without one
    python benchmarks/gpu.py --quick   # fewer rounds and rows
    python benchmarks/gpu.py --workload "64 x MLP 64-128-10"   # one workload
    python benchmarks/gpu.py --cpu --workload "64 x MLP 64-128-10"   # the same on the CPU

``--cpu`` runs the same ways without a GPU: the fedray rows then show what a pool worker
costs beyond the training itself. There the pool worker holds as many CPUs as the serial
loop has torch threads (all cores), as on a GPU it holds the whole card.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import threading
import time

import pandas as pd
import torch

from actors.data.load import synthetic_task
from actors.spec.data import DatasetSpec
from actors.spec.training import TrainSpec
from actors.training.batched import train_batched
from actors.training.loops import train_locally
from actors.training.models import build_model

WORKLOADS = {
    "16 x MLP 512-2048-2048-10": {"count": 16, "rows": 20_000, "features": 512, "hidden": [2048, 2048]},
    "64 x MLP 64-128-10": {"count": 64, "rows": 500, "features": 64, "hidden": [128]},
}
TRAIN = {"local_epochs": 1, "batch_size": 256, "lr": 0.05}


def dataset(w: dict) -> dict:
    rows = int(w["rows"] / 0.9)  # 10% held out as each participant's test split
    return {"name": "synthetic", "num_features": w["features"], "min_size": rows, "max_size": rows,
            "size_sigma": 0.0, "test_fraction": 0.1, "eval_participants": 2, "seed": 0}


def config(w: dict, rounds: int, batched: bool | str, gpus: float = 1, cpus: int = 1) -> dict:
    return {"name": "gpu", "seed": 0, "dataset": dataset(w),
            "groups": [{"name": "site", "count": w["count"], "hosting": "pool", "workers": 1, "batched": batched,
                        "cache_size": w["count"], "model": {"name": "mlp", "hidden": w["hidden"]},
                        "train": TRAIN, "resources": {"num_cpus": cpus, "num_gpus": gpus}}],
            "strategy": {"name": "fedavg"}, "schedule": {"mode": "sync"},
            "stop": {"max_aggregations": rounds}, "evaluation": {"every": rounds}}


class PeakMemory:
    """The card's used memory at its peak, sampled with nvidia-smi in a thread."""

    def __init__(self) -> None:
        self.peak, self.done = 0.0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.is_set() and torch.cuda.is_available():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.peak = max(self.peak, float(out.split()[0]) / 1024)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def serial(w: dict, rounds: int, device: torch.device, together: bool = False) -> dict:
    """One process, data on the card, each participant trained in turn (or, ``together``,
    all at once with :func:`actors.training.batched.train_batched`), then averaged."""
    with PeakMemory() as memory:
        result = _serial(w, rounds, device, together)
    return result | {"GPU GB": memory.peak}


def _load(model: torch.nn.Module, params: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, g in zip(model.parameters(), params):
            p.copy_(g)


@torch.no_grad()
def _add(total: list[torch.Tensor], model: torch.nn.Module) -> None:
    for t, p in zip(total, model.parameters()):
        t += p


def _serial(w: dict, rounds: int, device: torch.device, together: bool) -> dict:
    task = synthetic_task(DatasetSpec.model_validate(dataset(w)))
    spec = TrainSpec(**TRAIN)
    data = [tuple(torch.as_tensor(a, device=device) for a in task.participant(i)[:2]) for i in range(w["count"])]
    model = build_model("mlp", {"hidden": w["hidden"]}, (w["features"],), 10).to(device)
    params = [p.detach().clone() for p in model.parameters()]
    models = [copy.deepcopy(model) for _ in data] if together else [model] * len(data)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_locally(model, *data[0], spec, seed=0, epochs=1, steps=1)  # torch's first-call set-up, untimed
    if together:
        train_batched(models[:2], [x for x, _ in data[:2]], [y for _, y in data[:2]], spec, [0, 1], 1, 1)
    _load(model, params)  # as fedray's participants warm up, then undo it
    sync()
    started, samples = time.perf_counter(), 0
    for r in range(rounds):
        seeds = [r * 1000 + i for i in range(len(data))]
        total = [torch.zeros_like(p) for p in params]
        if together:
            for m in models:
                _load(m, params)
            done = train_batched(models, [x for x, _ in data], [y for _, y in data], spec, seeds, 1)
            for m in models:
                _add(total, m)
        else:
            done = []
            for m, (x, y), seed in zip(models, data, seeds):
                _load(m, params)
                done.append(train_locally(m, x, y, spec, seed=seed, epochs=1))
                _add(total, m)
        samples += sum(int(d["samples"]) for d in done)
        params = [t / len(data) for t in total]
    sync()
    seconds = time.perf_counter() - started
    return {"start s": 0.0, "train s": seconds, "samples/s": samples / seconds}


def fedray(w: dict, rounds: int, batched: bool | str, gpus: float) -> dict:
    from orchestrator.config import load_config
    from orchestrator.loop.run import Orchestrator

    with PeakMemory() as memory:
        cpus = 1 if gpus else torch.get_num_threads()  # on the CPU: the threads the serial loop has
        history = Orchestrator(load_config(config(w, rounds, batched, gpus, cpus))).run()
    first = float(history.time[history.event == "dispatch"].min())
    seconds = float(history.time[history.event == "aggregation"].max()) - first
    updates = history[history.event == "update"]
    return {"start s": first, "train s": seconds, "samples/s": float(updates.samples.sum()) / seconds,
            "GPU GB": memory.peak, "batched": float(updates.batched.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU, at full size unless --quick")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script runs")
    parser.add_argument("--workload", choices=list(WORKLOADS), action="append", help="only these (default: all)")
    args = parser.parse_args()
    on_cpu = args.cpu or args.cpu_smoke
    if not torch.cuda.is_available() and not on_cpu:
        print("benchmarks/gpu.py: no CUDA device here; nothing to measure (--cpu runs it on the CPU)")
        return
    import ray

    gpus = 0 if on_cpu else 1
    ray.init(num_gpus=gpus, num_cpus=4, include_dashboard=False)
    device = torch.device("cpu" if on_cpu else "cuda")
    rounds = 2 if args.cpu_smoke else 3 if args.quick else 10
    rows = []
    for label, w in WORKLOADS.items():
        if args.workload and label not in args.workload:
            continue
        shrink = 100 if args.cpu_smoke else 4 if args.quick else 1
        w = w | {"rows": w["rows"] // shrink, "count": w["count"] // (8 if args.cpu_smoke else 1)}
        if args.cpu_smoke:
            w["hidden"] = [16]
        base = serial(w, rounds, device)
        for way, result in (("serial", base), ("one process batched", serial(w, rounds, device, together=True)),
                            ("fedray pool", fedray(w, rounds, False, gpus)),
                            ("fedray batched", fedray(w, rounds, True, gpus)),
                            ("fedray auto", fedray(w, rounds, "auto", gpus))):
            rows.append({"workload": label, "way": way, **result,
                         "x serial": result["samples/s"] / base["samples/s"]})
    table = pd.DataFrame(rows).set_index(["workload", "way"])
    where = torch.cuda.get_device_name() if gpus else "CPU smoke run" if args.cpu_smoke else "CPU"
    print(f"{where}, {rounds} rounds")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
