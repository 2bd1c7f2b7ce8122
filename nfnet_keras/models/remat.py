"""Gradient checkpointing of NF blocks (`remat=True`).

Keras 3's layer-level rematerialisation (`keras.RematScope`) wraps one
layer's `call` in `keras.remat`, on TensorFlow `tf.recompute_grad`: only
that layer's internals are recomputed, while every layer's output is still
kept as the next layer's input. Memory scales with the stored tensors, so
an NF network saves little that way. Here the unit is the NF block: the
training forward pass keeps only each block's input, and the backward pass
recomputes the block (timm 1.0.31's `NormFreeNet.set_grad_checkpointing`
recomputes whole stages, `checkpoint_seq(self.stages, x)`).

The functional graph, its layers, weights and names are unchanged: each
block is run as a `keras.Model` over the same layers, from its input
tensor (`stage<i>_block<j>_preact`'s input) to its output
(`stage<i>_block<j>_add`), wrapped in `keras.remat`; the stem before the
first block and the head after the last one run as two more such models.

Random draws repeat exactly: a block's drop-path (`StochasticDepth`) draws
its mask from a `SeedGenerator` whose state advances on every call, so the
recomputation first puts each generator of the block back to the state it
had before the forward pass. The masks, and the generators' states after
the step, are those of the plain model.
"""

import re

import keras
from keras import ops

# The block naming of `builder.nf_block`: "stage<i>_block<j>_<layer>".
_BLOCK_OUTPUT = re.compile(r"stage\d+_block\d+_add")
_BLOCK_INPUT_SUFFIX = "preact"  # the block's first layer: act(x) * beta


class BlockRemat:
    """Runs a functional NF model block by block, recomputing each block
    in the backward pass.

    Args:
        model: a functional model built from NF blocks in a chain (each
            block's input is the previous block's output), as every
            constructor and `from_preset` builds.
    """

    def __init__(self, model):
        outputs = [layer for layer in model.layers if _BLOCK_OUTPUT.fullmatch(layer.name)]
        if not outputs:
            raise ValueError(
                "`remat=True` recomputes NF residual blocks (layers named "
                f"'stage<i>_block<j>_add'); model '{model.name}' has none."
            )
        bounds = []
        for add in outputs:
            prefix = add.name[: -len("add")]
            bounds.append((model.get_layer(prefix + _BLOCK_INPUT_SUFFIX).input, add.output))
        for (_, previous), (block_input, _), add in zip(bounds, bounds[1:], outputs[1:]):
            if block_input is not previous:
                raise ValueError(
                    "`remat=True` needs the NF blocks in one chain; the input of "
                    f"'{add.name[: -len('add')]}' is not the previous block's output."
                )
        self.stem = keras.Model(model.input, bounds[0][0])
        self.blocks = [keras.Model(x, y) for x, y in bounds]
        self.head = keras.Model(bounds[-1][1], model.output)
        # The seed generators of each block (drop path), to replay its draws.
        self.generators = [
            [
                layer.seed_generator
                for layer in block.layers
                if isinstance(getattr(layer, "seed_generator", None), keras.random.SeedGenerator)
            ]
            for block in self.blocks
        ]

    def __call__(self, inputs, training):
        x = self.stem(inputs, training=training)
        for block, generators in zip(self.blocks, self.generators):
            x = keras.remat(_replaying(block, generators, training))(x)
        return self.head(x, training=training)


def _replaying(block, generators, training):
    """`block` as a function of its input whose every run -- the forward
    pass and the recomputation -- starts from the same generator states."""
    states = [ops.copy(generator.state.value) for generator in generators]

    def run(x):
        for generator, state in zip(generators, states):
            generator.state.assign(state)
        return block(x, training=training)

    return run
