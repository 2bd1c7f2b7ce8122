"""The run directory: its recorded config, crash-safe checkpoints, resume.

* `config.json` records the run (the recipe and every flag that changes the
  result). A new command on the same `--out` resumes only when the record
  matches, and never replaces a finished run (`summary.json`), unless
  `--overwrite` is given. The file is written atomically once the model is
  built and restored, before training.
* Checkpoints are `tf.train.Checkpoint`s of the model (its weights and the
  random states of its dropout / stochastic-depth layers), the optimizer
  (step, momenta, EMA, loss scale) and the run's counters, kept by
  `tf.train.CheckpointManager` in `<out>/checkpoints`: each is written
  under new file names and becomes the latest only when the small
  `checkpoint` index is replaced atomically after it is whole, and the
  previous one is kept. On start the newest readable one is restored; one
  that fails to read is reported and the previous one is used.
* Multi-worker (TensorFlow's multi-worker guide): every worker saves, since
  saving may need collectives, but only the chief into `<out>`; the others
  write into a temporary directory that they remove. The chief alone
  restores, and its state is broadcast to the other workers, so that their
  `--out` may be local disks.
"""

import json
import os
import shutil

import tensorflow as tf

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
# The previous complete checkpoint stays until a newer one is whole.
MAX_TO_KEEP = 2
# What a run writes into `--out`; `--overwrite` removes these first.
OUTPUTS = (CONFIG_FILE, SUMMARY_FILE, CHECKPOINT_DIR, "tensorboard", "model.keras",
           "model.weights.h5", "best.keras", "export")


class Cluster:
    """This process's place in the strategy's cluster."""

    def __init__(self, strategy):
        # Only multi-worker strategies have several Python processes (a TPU
        # strategy's hosts are driven by this one process).
        resolver = None
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
        self.task_type = getattr(resolver, "task_type", None)
        self.task_id = getattr(resolver, "task_id", None) or 0
        self.num_workers = sum(len(v) for k, v in spec.items() if k in ("chief", "worker")) or 1
        self.is_chief = (
            self.task_type in (None, "chief")
            or (self.task_type == "worker" and self.task_id == 0 and "chief" not in spec)
        )


def write_json(path, data):
    """Writes JSON to a temporary name, then renames it into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _differences(old, new):
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def prepare(out, record, overwrite):
    """Checks `out` against the run `record` (chief only); raises ValueError.

    `record["run"]` holds what changes the result; the rest (strategy,
    versions, command line) is information. The caller writes the record
    (`write_json`) once the model is built and restored.
    """
    os.makedirs(out, exist_ok=True)
    config_path = os.path.join(out, CONFIG_FILE)
    if overwrite:
        for name in OUTPUTS:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    elif os.path.exists(os.path.join(out, SUMMARY_FILE)):
        raise ValueError(
            f"`--out` {out} holds a finished run ({SUMMARY_FILE}). Pass --overwrite to "
            "replace it, or choose another --out."
        )
    elif os.path.exists(config_path):
        try:
            with open(config_path) as f:
                old = json.load(f)["run"]
        except (OSError, ValueError, KeyError):
            old = None
        if old is None:
            raise ValueError(
                f"`--out` {out} has an unreadable {CONFIG_FILE}. Pass --overwrite to start "
                "a new run there, or choose another --out."
            )
        changes = _differences(old, record["run"])
        if changes:
            shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
            raise ValueError(
                f"`--out` {out} holds a run with another configuration ({shown}). "
                "Pass --overwrite to start a new run there, or choose another --out."
            )


class Checkpoints:
    """Saves and restores one run's training state (see the module doc)."""

    def __init__(self, out, cluster, **trackables):
        self.cluster = cluster
        self.directory = os.path.join(out, CHECKPOINT_DIR)
        self.checkpoint = tf.train.Checkpoint(**trackables)
        if cluster.is_chief:
            self.write_dir = self.directory
        else:
            self.write_dir = os.path.join(out, f"workertemp_{cluster.task_id}")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_dir, max_to_keep=MAX_TO_KEEP
        )

    def save(self, step):
        path = self.manager.save(checkpoint_number=step)
        if not self.cluster.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
            # A fresh manager: the removed files are not its to delete later.
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, self.write_dir, max_to_keep=MAX_TO_KEEP
            )
        return path

    def restore_latest(self):
        """Restores the newest readable checkpoint (chief); returns its path.

        Returns None when there is none. Raises ValueError naming the files
        when checkpoints exist but none can be read, or when they belong to
        another model.
        """
        if not self.cluster.is_chief:
            return None
        candidates = list(reversed(self.manager.checkpoints))
        broken = []
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except ValueError as error:  # shapes or objects of another model
                raise ValueError(
                    f"Checkpoint {path} does not fit this model "
                    f"({str(error).splitlines()[0][:200]}). Pass --overwrite to start a new "
                    "run in --out, or choose another --out."
                ) from None
            except (tf.errors.OpError, AssertionError, IndexError, OSError) as error:
                broken.append(path)
                print(
                    f"[checkpoint] {path} cannot be read ({type(error).__name__}); "
                    "trying the previous one"
                )
                continue
            return path
        if broken:
            raise ValueError(
                f"No checkpoint in {self.directory} can be read (broken: {', '.join(broken)}). "
                f"Delete {self.directory} to restart from step 0, or pass --overwrite."
            )
        return None


def chief_agrees(strategy, cluster, ok):
    """All workers learn whether the chief's check passed (one collective)."""
    if cluster.num_workers == 1:
        return ok
    vote = 0.0 if (ok or not cluster.is_chief) else 1.0

    @tf.function
    def votes():
        def replica_fn():
            return tf.distribute.get_replica_context().all_reduce("sum", tf.constant(vote))

        return strategy.experimental_local_results(strategy.run(replica_fn))[0]

    return float(votes()) == 0.0


def broadcast_from_chief(strategy, cluster, variables):
    """Copies the chief's values of `variables` to every worker."""
    if cluster.num_workers == 1:
        return

    @tf.function
    def sync():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            # float64 holds every float32 and every integer counter exactly.
            values = [
                tf.where(first, tf.cast(v, tf.float64), tf.zeros(v.shape, tf.float64))
                for v in variables
            ]
            return context.all_reduce("sum", values)

        summed = strategy.run(replica_fn)
        for v, value in zip(variables, summed):
            v.assign(tf.cast(strategy.experimental_local_results(value)[0], v.dtype))

    sync()
