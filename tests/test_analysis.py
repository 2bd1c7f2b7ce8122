"""Signal propagation: DeepMind's metrics, the paper's curves, the plot and its command."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _haiku_files as hf  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras import analysis, baselines  # noqa: E402

ALPHA = 0.2  # the NF models' alpha (deepmind-research default), independent of the package


def deepmind_signal_metrics(x, i):
    """deepmind-research `nfnets/base.py` `signal_metrics`, transcribed into NumPy:
    ``mean(mean(x, axis=[0, 1, 2]) ** 2)`` and ``mean(var(x, axis=[0, 1, 2]))``."""
    x = np.asarray(x, np.float64)
    return {
        f"avg_sq_mean_{i}": np.mean(np.mean(x, axis=(0, 1, 2)) ** 2),
        f"avg_var_{i}": np.mean(np.var(x, axis=(0, 1, 2))),
    }


def test_the_numpy_transcription_on_a_hand_built_tensor():
    # Channel c holds c + 0.1 c (+1 or -1 in a checkerboard): channel mean c,
    # population variance (0.1 c)^2 whatever the batch and spatial sizes.
    c = np.arange(1.0, 5.0)
    signs = np.where(np.indices((2, 3, 4)).sum(0) % 2 == 0, 1.0, -1.0)[..., None]
    x = c + 0.1 * c * signs
    metrics = deepmind_signal_metrics(x, 7)
    assert metrics["avg_sq_mean_7"] == pytest.approx(np.mean(c**2))  # 7.5
    assert metrics["avg_var_7"] == pytest.approx(np.mean((0.1 * c) ** 2))  # 0.075


def deepmind_expected(model, images, depths):
    """DeepMind's `NFNet.__call__(return_metrics=True)` keys and values over
    our NFNet's tensors, picked by their layer names: the stem is
    ``stem_conv3``; block i's branch is its SE output (``(se(out) * 2) *
    out``, before stochastic depth and the skip gain), its output the add."""
    prefixes = [f"stage{s}_block{b}_" for s, d in enumerate(depths) for b in range(d)]
    names = ["stem_conv3"] + [p + "se" for p in prefixes] + [p + "add" for p in prefixes]
    taps = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    values = [t.numpy() for t in taps(images)]
    stem, branches, outputs = values[0], values[1 : 1 + len(prefixes)], values[1 + len(prefixes) :]
    expected = deepmind_signal_metrics(stem, 0)
    for i, (branch, out) in enumerate(zip(branches, outputs)):
        expected.update(deepmind_signal_metrics(out, i + 1))
        expected[f"res_avg_var_{i}"] = np.mean(np.var(np.asarray(branch, np.float64), axis=(0, 1, 2)))
    return expected


@pytest.mark.parametrize(
    "row,size",
    [("tiny", 32), ("F0", 64)],
)
def test_matches_deepmind_metrics_on_a_haiku_checkpoint(tmp_path, row, size):
    layout = hf.TINY if row == "tiny" else hf.F0
    tree = hf.nfnet_tree(**layout, classes=10, seed=5)  # random, nonzero skip gains
    path = hf.write_haiku_pickle(tmp_path / f"{row}_haiku.npz", tree)
    model = nfnet_keras.NFNet(row, input_shape=(size, size, 3), classes=10, weights=str(path),
                              include_preprocessing=False)  # DeepMind's nets take normalised images
    images = np.random.default_rng(1).standard_normal((4, size, size, 3)).astype("float32")

    stats = analysis.signal_propagation(model, images)

    expected = deepmind_expected(model, images, layout["depths"])
    blocks = sum(layout["depths"])
    assert sorted(stats) == sorted(expected)
    assert len(stats) == 3 * blocks + 2
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-4), key
    assert min(stats[f"res_avg_var_{i}"] for i in range(blocks)) > 1e-3


@pytest.fixture(scope="module")
def nf_resnet26():
    # 512 px keeps the last stage at 16 x 16, where SAME zero padding costs a
    # 3x3 conv only ~8 % of its variance (extensions reference §1.6).
    return nfnet_keras.NFResNet26(weights=None, include_top=False, input_shape=(512, 512, 3))


def test_nf_resnet_at_init_follows_the_paper(nf_resnet26):
    stats = analysis.signal_propagation(nf_resnet26, batch_size=2, skip_gain=1.0)
    depths = (2, 2, 2, 2)
    assert stats.transitions == (0, 2, 4, 6)
    i = 0
    for depth in depths:
        for k in range(depth):
            assert 0.9 <= stats[f"res_avg_var_{i}"] <= 1.1, (i, stats[f"res_avg_var_{i}"])
            expected = 1 + (k + 1) * ALPHA**2  # reset at each transition (k = 0)
            assert stats[f"avg_var_{i + 1}"] == pytest.approx(expected, rel=0.1), i
            assert stats[f"avg_sq_mean_{i + 1}"] < 0.05
            i += 1
    for first in stats.transitions[1:]:  # the variance drops back at each transition
        assert stats[f"avg_var_{first + 1}"] < stats[f"avg_var_{first}"]
    # The probe leaves the model as it was: SkipInit gains back at 0.
    gains = [l.skip_gain.numpy() for l in nf_resnet26.layers if isinstance(l, nfnet_keras.SkipGain)]
    assert len(gains) == 8 and not any(gains)


def test_without_ws_the_squared_mean_overtakes_the_variance(nf_resnet26):
    plain = analysis.without_weight_standardization(nf_resnet26)
    assert not any(isinstance(l, nfnet_keras.ScaledStdConv2D) for l in plain.layers)
    stats = analysis.signal_propagation(plain, batch_size=2, skip_gain=1.0)
    for i in (7, 8):  # the last stage's block outputs
        assert stats[f"avg_sq_mean_{i}"] > stats[f"avg_var_{i}"]


@pytest.fixture(scope="module")
def bn_stats():
    keras.utils.set_random_seed(0)
    results = {}
    for order in baselines.ORDERS:
        model = baselines.BNResNetV2((4, 4), order, widths=(256, 512), include_top=False,
                                     input_shape=(128, 128, 3))
        results[order] = analysis.signal_propagation(model, batch_size=4)
        # Batch statistics were used and the moving ones left at their init.
        bn = model.get_layer("stage0_block1_preact_bn")
        np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
    return results


def test_bn_relu_conv_baseline(bn_stats):
    stats = bn_stats["bn_relu_conv"]
    # He init: residual variance 2 sigma_g^2 = 1 - 1/pi ~ 0.682; squared mean
    # grows by 2 mu_g^2 = 1/pi ~ 0.318 per block (extensions reference §1.5 (a)).
    for i in range(4):
        assert stats[f"res_avg_var_{i}"] == pytest.approx(1 - 1 / np.pi, abs=0.05)
    # Each block adds 256 independent squared channel means: ~10 % noise per
    # block, so the growth over three blocks is held to +-1/3.
    growth = (stats["avg_sq_mean_4"] - stats["avg_sq_mean_1"]) / 3
    assert 0.21 <= growth <= 0.42
    assert stats["avg_var_5"] < stats["avg_var_4"]  # reset at the transition


def test_relu_bn_conv_baseline(bn_stats):
    stats = bn_stats["relu_bn_conv"]
    # The conv input is centred by BN: no mean shift; He gain 2 on a unit input.
    for i in range(1, 9):
        assert stats[f"avg_sq_mean_{i}"] < 0.05
    for i in range(8):
        assert stats[f"res_avg_var_{i}"] == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(
    "name,size", [("nfnet_tiny", 32), ("nf_resnet_tiny", 32), ("nf_regnet_tiny", 32),
                  ("timm_nf_resnet26", 64), ("timm_nf_regnet_b0", 64)],
)
def test_every_family_is_probed_without_changing_it(name, size):
    model = nfnet_keras.get_model(name, weights=None, include_top=False,
                                  input_shape=(size, size, 3), include_preprocessing=False)
    images = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype("float32")
    before = model(images).numpy()
    stats = analysis.signal_propagation(model, images)
    blocks = stats.num_blocks
    assert blocks == sum(1 for l in model.layers if l.name.endswith("_add"))
    assert len(stats) == 3 * blocks + 2
    assert all(np.isfinite(v) for v in stats.values())
    np.testing.assert_array_equal(model(images).numpy(), before)


def test_gaussian_input_enters_after_in_model_preprocessing():
    kwargs = dict(weights=None, include_top=False, input_shape=(32, 32, 3))
    with_preprocessing = nfnet_keras.get_model("nf_resnet_tiny", include_preprocessing=True, **kwargs)
    plain = nfnet_keras.get_model("nf_resnet_tiny", include_preprocessing=False, **kwargs)
    plain.set_weights(with_preprocessing.get_weights())
    a = analysis.signal_propagation(with_preprocessing, batch_size=2, skip_gain=1.0)
    b = analysis.signal_propagation(plain, batch_size=2, skip_gain=1.0)
    assert a == pytest.approx(b, rel=1e-3, abs=1e-6)


def test_bad_input_is_named():
    model = nfnet_keras.get_model("nf_resnet_tiny", weights=None, include_top=False,
                                  input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="`images` must be an NHWC batch with 3 channels"):
        analysis.signal_propagation(model, np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        analysis.signal_propagation(model, batch_size=0)
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="has no residual blocks"):
        analysis.signal_propagation(plain)
    bn = baselines.BNResNetV2((1, 1), widths=(64, 128), include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="has no SkipGain layers"):
        analysis.signal_propagation(bn, skip_gain=1.0)


def test_plot_has_three_panels_one_point_per_block_and_transitions(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    model = nfnet_keras.get_model("nf_resnet_tiny", weights=None, include_top=False,
                                  input_shape=(32, 32, 3))
    stats = [analysis.signal_propagation(model, batch_size=2, skip_gain=g) for g in (0.0, 1.0)]
    figure = analysis.plot_signal_propagation(stats, labels=["gain 0", "gain 1"])
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == [
        "Average channel squared mean", "Average channel variance", "Residual average channel variance",
    ]
    for ax, points in zip(axes, (5, 5, 4)):  # stem + 4 blocks; 4 branches
        data_lines = [l for l in ax.get_lines() if len(l.get_xdata()) > 2]
        assert [len(l.get_xdata()) for l in data_lines] == [points, points]
        marks = [l for l in ax.get_lines() if l not in data_lines]
        assert sorted(float(l.get_xdata()[0]) for l in marks) == [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(axes[1].get_lines()[1].get_ydata(),
                               [stats[1][f"avg_var_{i}"] for i in range(5)])
    with pytest.raises(ValueError, match="`labels` must be a list of 2 strings"):
        analysis.plot_signal_propagation(stats, labels=["one"])


def test_command_writes_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "spp.png"
    analysis.main(["nf_resnet_tiny", "nfnet_tiny", "--image-size", "32", "--batch-size", "2",
                   "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nfnet_tiny: 4 blocks" in capsys.readouterr().out
