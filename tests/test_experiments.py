"""The AGC miniature: real data, a short run, the table and the README block."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
from experiments import agc_miniature  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return agc_miniature.load_digits()


def test_uses_the_real_digits_images(digits):
    x_train, y_train, x_test, y_test = digits
    assert x_train.shape == (1347, 32, 32, 3) and x_test.shape == (450, 32, 32, 3)
    assert sorted(set(y_train)) == list(range(10)) and sorted(set(y_test)) == list(range(10))
    assert abs(x_train.mean()) < 1e-3 and abs(x_train.std() - 1) < 1e-3
    # Each 8x8 pixel became a 4x4 block, the same in the three channels.
    image = x_train[0]
    np.testing.assert_array_equal(image[::4, ::4, 0].repeat(4, 0).repeat(4, 1), image[..., 0])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert len(np.unique(image)) > 3  # not a constant or binary image


@pytest.mark.slow  # ~20 s, mostly tracing the AGC train step
def test_a_short_run_reports_its_numbers(digits):
    result = agc_miniature.train_one("nf_agc", 32, digits, steps=12, base_lr=0.4)
    assert result["lr"] == pytest.approx(0.4 * 32 / 256)
    assert result["skipped_steps"] == 0 and np.isfinite(result["final_train_loss"])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="`steps` must be at least 11"):
        agc_miniature.train_one("nf_agc", 32, digits, steps=6)


def test_table_and_readme_block(tmp_path):
    results = [
        dict(config=c, batch_size=b, lr=0.4 * b / 256, test_accuracy=acc, diverged=acc < 0.2)
        for b, accs in ((64, (0.9, 0.92, 0.97)), (1024, (0.087, 0.8, 0.95)))
        for c, acc in zip(agc_miniature.CONFIGS, accs)
    ]
    markdown = agc_miniature.table(results)
    assert markdown.splitlines()[3] == "| 1024 | 1.6 | 8.7 % (diverged) | 80.0 % | 95.0 % |"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- agc-miniature:start -->\nold\n<!-- agc-miniature:end -->\nrest\n")
    agc_miniature.update_readme(str(readme), markdown)
    text = readme.read_text()
    assert "old" not in text and markdown in text and text.startswith("intro") and text.endswith("rest\n")
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no '<!-- agc-miniature:start -->'"):
        agc_miniature.update_readme(str(readme), markdown)
