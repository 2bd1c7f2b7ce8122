"""Weights loading."""


def load_weights(model, weights, variant, include_top):
    if weights == "imagenet":
        raise NotImplementedError("imagenet weights are not available yet")
    model.load_weights(weights, skip_mismatch=not include_top)
