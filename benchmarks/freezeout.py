"""FreezeOut: measured step-time saving next to the FLOP-predicted saving.

For an NF model on random data, the train step is timed with 0, 1, ..., L
of its FreezeOut groups frozen (the train function rebuilt for each, as
`FreezeOut` does; median of ``--repeats`` steps, the lower of two sweeps to
damp other load on a shared machine). The measured saving of a FreezeOut run
weights each phase's step time by the fraction of the run it lasts under the
schedule; the predicted saving is the reference's FLOP estimate
(`FreezeOut.predicted_saving`). A real `fit` with the callback is also
timed, retraces included: on a CPU each freeze rebuilds the train function
for seconds, which only a long run amortises.

    .venv/bin/python -m benchmarks.freezeout --model nf_resnet26 --size 64 --batch 32 --steps 60
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _model(name, size):
    import keras

    import nfnet_keras

    keras.utils.set_random_seed(0)
    model = nfnet_keras.get_model(name, weights=None, include_preprocessing=False,
                                  input_shape=(size, size, 3), classes=10,
                                  classifier_activation=None)
    model.compile(optimizer=nfnet_keras.NFSGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(size, batch, n_batches):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * n_batches, size, size, 3)).astype("float32")
    return x, rng.integers(0, 10, batch * n_batches)


def step_times_by_frozen_groups(model, groups, x, y, batch, repeats):
    """Median train-step seconds with the first k groups frozen, k = 0 ... L."""
    times = []
    for k in range(len(groups)):
        for layer in (layer for group in groups[:k] for layer in group):
            layer.trainable = False
        model.make_train_function(force=True)
        model.train_on_batch(x[:batch], y[:batch])  # trace
        samples = []
        for i in range(repeats):
            start = time.perf_counter()
            model.train_on_batch(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
            samples.append(time.perf_counter() - start)
        times.append(statistics.median(samples))
    for layer in model.layers:
        layer.trainable = True
    return times


def main(argv=None):
    import keras

    from nfnet_keras.callbacks import FreezeOut, freeze_points, layer_groups

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nf_resnet26")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="length of the timed fit runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per phase")
    parser.add_argument("--t0", type=float, default=0.8)
    parser.add_argument("--scaling", default="cubic")
    args = parser.parse_args(argv)

    model = _model(args.model, args.size)
    x, y = _data(args.size, args.batch, max(args.steps, args.repeats))
    groups = layer_groups(model)
    sweeps = [step_times_by_frozen_groups(model, groups, x, y, args.batch, args.repeats)
              for _ in range(2)]
    times = [min(a, b) for a, b in zip(*sweeps)]
    freezeout = FreezeOut(t0=args.t0, scaling=args.scaling)
    freezeout.set_model(model)
    points = [0.0] + freeze_points(len(groups), args.t0, args.scaling)
    # Phase k (k groups frozen) lasts from t_{k-1} to t_k of the run (t_{-1} = 0).
    fractions = [points[k + 1] - points[k] for k in range(len(groups))]
    measured = 1 - sum(f * t for f, t in zip(fractions, times)) / times[0]
    predicted, predicted_2x = freezeout.predicted_saving()

    # A real run with the callback against one without, retraces included.
    walls = {}
    for label, callbacks in (("without", []), ("with", [FreezeOut(t0=args.t0, scaling=args.scaling)])):
        run = _model(args.model, args.size)
        start = time.perf_counter()
        run.fit(x, y, batch_size=args.batch, epochs=1, steps_per_epoch=args.steps, shuffle=False,
                verbose=0, callbacks=callbacks)
        walls[label] = time.perf_counter() - start
    summary = {
        "model": args.model, "size": args.size, "batch": args.batch, "groups": len(groups),
        "t0": args.t0, "scaling": args.scaling,
        "step_s_with_k_groups_frozen": [round(t, 4) for t in times],
        "measured_saving_steady_state": round(measured, 3),
        "predicted_saving_backward_1x_forward": round(predicted, 3),
        "predicted_saving_backward_2x_forward": round(predicted_2x, 3),
        f"fit_{args.steps}_steps_s": {k: round(v, 1) for k, v in walls.items()},
        "keras": keras.__version__,
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
