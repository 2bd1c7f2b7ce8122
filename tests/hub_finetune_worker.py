"""tf_keras side of the export tests: hub.KerasLayer(trainable=True) fine-tuning.

Run as ``TF_USE_LEGACY_KERAS=1 python hub_finetune_worker.py SAVED_MODEL DATA.npz``
(tf_keras and Keras 3 cannot share a process for this). DATA holds `images`,
`expected` (the Keras 3 model's inference outputs) and `labels`. Prints one
JSON line with what it measured.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub


def main(path, data_path):
    data = np.load(data_path)
    images, expected, labels = data["images"], data["expected"], data["labels"]
    layer = hub.KerasLayer(path, trainable=True)
    model = tf.keras.Sequential(
        [tf.keras.layers.InputLayer(input_shape=images.shape[1:]), layer]
    )
    inference = model(images, training=False).numpy()
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    tf.keras.optimizers.SGD(0.1).apply_gradients(zip(grads, model.trainable_variables))
    after = model(images, training=False).numpy()
    changed = [
        not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)
    ]
    print(
        json.dumps(
            {
                "keras_module": tf.keras.layers.Layer.__module__,
                "layer_class": type(layer).__module__ + "." + type(layer).__name__,
                "max_abs_diff": float(np.max(np.abs(inference - expected))),
                "num_trainable": len(model.trainable_variables),
                "num_none_grads": sum(g is None for g in grads),
                "num_nonzero_grads": sum(
                    g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads
                ),
                "num_changed": sum(changed),
                "output_change": float(np.max(np.abs(after - inference))),
                "loss": float(loss),
                "num_losses": len(model.losses),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
