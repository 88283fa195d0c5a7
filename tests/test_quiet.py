"""megavid hides megatron-core's known noise, and nothing a user can act on."""

from __future__ import annotations

import warnings

from megavid import quiet


def test_known_noise_is_hidden_and_other_warnings_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("Transformer Engine and Apex are not installed. Falling back to Torch "
                      "optimizers.", UserWarning)
        warnings.warn("Please use DTensor instead and we are deprecating ShardedTensor.",
                      FutureWarning)
        warnings.warn("data: skipped_corrupt a.mp4", UserWarning)  # the user's own data: shown
        warnings.warn("Please use DTensor instead", UserWarning)  # same words, other category
    assert [str(w.message) for w in caught] == ["data: skipped_corrupt a.mp4",
                                                 "Please use DTensor instead"]


def test_patterns_fit_pytests_filter_syntax():
    assert all(":" not in message for message, _, _ in quiet.KNOWN_NOISE + quiet.CPU_ONLY_NOISE)
