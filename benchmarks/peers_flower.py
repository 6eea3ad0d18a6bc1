"""Issue 23's W1 workload on Flower, for ``benchmarks/peers.py`` (run by it in a process of
its own, with an interpreter that has ``flwr[simulation]``; it imports no fedray).

The same data, split and model as ``peers_pfl.py`` (``benchmarks/w1.py``). Flower's
simulation runtime (on its own local Ray) runs ``--participants`` supernodes with one CPU
each; each client loads the digits and keeps its own shard, trains one local epoch of
SGD lr 0.05, batch 32, and returns its weights; Flower's ``FedAvg`` samples ``--per-round``
a round for ``--rounds`` rounds and averages by example count. The server evaluates on the
held-out rows once, at the end.

    python benchmarks/peers_flower.py --participants 8 --per-round 8 --rounds 30 [--iid]

Prints one line: ``accuracy <value>``.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from w1 import MLP, w1_data, workload_args  # benchmarks/w1.py, beside this script

ARGS = argparse.Namespace()


def local_epoch(model: MLP, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """One epoch of SGD lr 0.05 in batches of 32; returns the last batch's loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    loss = torch.zeros(())
    for start in range(0, len(y), 32):
        rows = order[start:start + 32]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        optimizer.step()
    return float(loss.detach())


client = ClientApp()


@client.train()
def train(message: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    x, y, _, shards = w1_data(int(os.environ["W1_PARTICIPANTS"]), os.environ["W1_IID"] == "1")
    rows = shards.get(int(context.node_config["partition-id"]), [])
    model = MLP()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    loss = local_epoch(model, torch.from_numpy(x[rows]), torch.from_numpy(y[rows]),
                       int(message.content["config"].get("server-round", 0))) if len(rows) else 0.0
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(rows)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=message)


server = ServerApp()


@server.main()
def main_server(grid: Grid, context: Context) -> None:
    participants, per_round = ARGS.participants, ARGS.per_round
    strategy = FedAvg(fraction_train=per_round / participants, fraction_evaluate=0.0, min_train_nodes=per_round,
                      min_available_nodes=participants)
    torch.manual_seed(0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(MLP().state_dict()), num_rounds=ARGS.rounds)
    x, y, test, _ = w1_data(participants, ARGS.iid)
    model = MLP()
    model.load_state_dict(result.arrays.to_torch_state_dict())
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x[test])).argmax(1) == torch.from_numpy(y[test])).float().mean())
    print(f"accuracy {accuracy:.4f}", flush=True)


def main() -> None:
    workload_args(__doc__.splitlines()[0], ARGS)
    # the clients run in Ray workers: they read the workload from the environment they inherit
    os.environ |= {"W1_PARTICIPANTS": str(ARGS.participants), "W1_IID": "1" if ARGS.iid else "0"}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=client, num_supernodes=ARGS.participants,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


if __name__ == "__main__":
    main()
