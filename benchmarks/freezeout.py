"""FreezeOut: measured step-time saving next to the FLOP-predicted saving.

Trains the same NF model on random data twice, without and with
`nfnet_keras.callbacks.FreezeOut`, timing every step. The steps right after
a freeze rebuild the train function (a retrace, seconds on a CPU) and are
reported apart; the steady-state saving integrates the median step time of
each phase (number of frozen groups) over the run.

    .venv/bin/python -m benchmarks.freezeout --model nf_resnet26 --size 64 --batch 32 --steps 80
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _run(model_name, size, batch, steps, freezeout):
    import keras

    import nfnet_keras

    keras.utils.set_random_seed(0)
    model = nfnet_keras.get_model(model_name, input_shape=(size, size, 3), classes=10,
                                  classifier_activation=None)
    model.compile(optimizer=nfnet_keras.NFSGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, batch * steps)
    times, phases = [], []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, step, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, step, logs=None):
            times.append(time.perf_counter() - self.start)
            phases.append(len(freezeout.frozen_at) if freezeout else 0)

    callbacks = [freezeout, Timer()] if freezeout else [Timer()]
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model, times, phases


def main(argv=None):
    from nfnet_keras.callbacks import FreezeOut

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nf_resnet26")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--t0", type=float, default=0.8)
    parser.add_argument("--scaling", default="cubic")
    args = parser.parse_args(argv)

    _, base_times, _ = _run(args.model, args.size, args.batch, args.steps, None)
    base_step = statistics.median(base_times[2:])
    freezeout = FreezeOut(t0=args.t0, scaling=args.scaling)
    model, times, phases = _run(args.model, args.size, args.batch, args.steps, freezeout)
    retrace = set(freezeout.frozen_at) | {0}
    steady = {}
    for step, (seconds, phase) in enumerate(zip(times, phases)):
        if step not in retrace:
            steady.setdefault(phase, []).append(seconds)
    medians = {phase: statistics.median(v) for phase, v in steady.items()}
    counts = {phase: phases.count(phase) for phase in medians}
    steady_total = sum(counts[p] * medians[p] for p in medians)
    predicted, predicted_2x = freezeout.predicted_saving()
    summary = {
        "model": args.model, "size": args.size, "batch": args.batch, "steps": args.steps,
        "t0": args.t0, "scaling": args.scaling, "groups": len(freezeout.freeze_steps),
        "baseline_step_s": round(base_step, 4),
        "step_s_by_frozen_groups": {p: round(m, 4) for p, m in sorted(medians.items())},
        "measured_saving_steady": round(1 - steady_total / (args.steps * base_step), 3),
        "measured_saving_wall_clock_with_retraces": round(1 - sum(times) / sum(base_times), 3),
        "predicted_saving_flops_backward_1x": round(predicted, 3),
        "predicted_saving_flops_backward_2x": round(predicted_2x, 3),
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
