"""One measurement for benchmarks/paths_speed.py, run in its own process against *some* checkout of the
``landscape`` package (PYTHONPATH decides which: today's or the baseline commit's).

    python benchmarks/paths_child.py WORK.pt        prints JSON: seconds and values of a surface and a line

It imports ``landscape.runtime`` first, as every stage does, and then only interfaces both versions share:
``landscape.models.MLP``, ``landscape.paths.surface.loss_surface`` (the surface stage's 21 × 21 plane on the
whole training split) and ``landscape.paths.line.line_losses`` (21 points on the train and test splits: the
interpolate stage's line, and the connect stage's line between its two copies, which is the same work).
"""

import json
import sys
import time

from landscape import runtime  # noqa: F401 - first, as in every stage (today: keeps freed memory)

import torch

torch.set_num_threads(1)  # the pipeline's default (train.threads)

from landscape.models import MLP
from landscape.parameters import flatten
from landscape.paths.line import alpha_grid, line_losses
from landscape.paths.surface import loss_surface


def main() -> None:
    work = torch.load(sys.argv[1], weights_only=True)
    xt, yt, xs, ys = work["x_train"], work["y_train"], work["x_test"], work["y_test"]
    model = MLP(784, [256, 256], "relu", 10)
    model.load_state_dict(work["state"])
    start = MLP(784, [256, 256], "relu", 10)
    start.load_state_dict(work["start"])
    t0 = time.perf_counter()
    surface = loss_surface(model, (xt, yt), 21, 1.0, "filter", 0)
    t_surface = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = line_losses(model, flatten(start), flatten(model), alpha_grid(21), (xt, yt), (xs, ys))
    t_line = time.perf_counter() - t0
    print(json.dumps({"surface_s": t_surface, "line_s": t_line,
                      "surface_loss": [v for row in surface["loss"] for v in row],
                      "line_loss": [r["loss"] for r in rows], "line_test_loss": [r["test_loss"] for r in rows]}))


if __name__ == "__main__":
    main()
