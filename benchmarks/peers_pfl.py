"""Issue 23's W1 workload on pfl-research, for ``benchmarks/peers.py`` (run by it in a
process of its own, with an interpreter that has ``pfl[pytorch]``; it imports no fedray).

Digits (scikit-learn's bundled copy, pixels / 16, 20% held out with a fixed seed), split
over ``--participants`` by a Dirichlet(0.5) label partition (or iid), an MLP of the same
shape fedray's ``mlp`` with ``hidden: [64, 128]`` builds (64-64-128-10), SGD lr 0.05 for one
local epoch of batch 32, FedAvg (central SGD, lr 1), ``--per-round`` participants a round,
``--rounds`` rounds, evaluated on the held-out rows at the end. The split is
this script's own draw from the same family as fedray's, not the same rows.

    python benchmarks/peers_pfl.py --participants 8 --per-round 8 --rounds 30 [--iid]

Prints one line: ``accuracy <value>``.
"""

from __future__ import annotations

import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Weighted
from pfl.model.pytorch import PyTorchModel
from w1 import MLP, w1_data, workload_args  # benchmarks/w1.py, beside this script


class PflMLP(MLP):
    """W1's MLP with the ``loss``/``metrics`` pfl asks of a model."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:  # noqa: A002
        self.eval() if eval else self.train()
        return torch.nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict[str, Weighted]:  # noqa: A002
        self.eval() if eval else self.train()
        correct = float((self(x).argmax(1) == y).sum())
        return {"accuracy": Weighted(correct, len(y))}


def main() -> None:
    args = workload_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y, test, shards = w1_data(args.participants, args.iid)

    def user(i: int) -> Dataset:
        return Dataset(raw_data=[torch.from_numpy(x[shards[i]]), torch.from_numpy(y[shards[i]])], user_id=i)

    train_data = FederatedDataset(user, get_user_sampler("random", list(shards)))
    central = Dataset(raw_data=[torch.from_numpy(x[test]), torch.from_numpy(y[test])])
    model = PflMLP()
    pfl_model = PyTorchModel(model=model, local_optimizer_create=torch.optim.SGD,
                             central_optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    eval_params = NNEvalHyperParams(local_batch_size=1024)
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=args.rounds, evaluation_frequency=args.rounds,
                                           train_cohort_size=args.per_round, val_cohort_size=0),
        backend=SimulatedBackend(training_data=train_data, val_data=None),
        model=pfl_model,
        model_train_params=NNTrainHyperParams(local_learning_rate=0.05, local_num_epochs=1, local_batch_size=32),
        model_eval_params=eval_params,
    )
    metrics = pfl_model.evaluate(central, eval_params=eval_params)
    accuracy = next(v for k, v in metrics.to_simple_dict().items() if k.lower() == "accuracy")
    print(f"accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
