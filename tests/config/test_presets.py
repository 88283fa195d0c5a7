"""The preset table is the registry: every row is checked, timm-style."""

from __future__ import annotations

import pytest

from megavid.config.presets import PRESETS, count_parameters, get_preset


def independent_count(width, depth, mlp, dec_width, dec_depth, dec_mlp, tokens, pixels):
    """Written from the architecture description, not from megavid's code."""
    def block(h, f):
        # q, k, v, out: h*h weights + h biases each; fc1 h*f + f; fc2 f*h + h; 2 LNs of 2h
        return 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * (2 * h)
    encoder = (pixels * width + width) + tokens * width + depth * block(width, mlp)
    decoder = ((width * dec_width + dec_width) + dec_width + tokens * dec_width
               + dec_depth * block(dec_width, dec_mlp) + 2 * dec_width
               + (dec_width * pixels + pixels))
    return encoder, decoder


@pytest.mark.parametrize("name", list(PRESETS))
def test_counts_match_independent_formula(name):
    a = get_preset(name)
    enc, dec = independent_count(a.hidden_size, a.num_layers, a.ffn_hidden_size,
                                 a.decoder_hidden_size, a.decoder_num_layers,
                                 a.decoder_ffn_hidden_size, a.num_tokens, a.patch_dim)
    assert count_parameters(a) == {"encoder": enc, "decoder": dec, "total": enc + dec}


@pytest.mark.parametrize("name, published", [("4ds-b", 88e6), ("4ds-e", 3.8e9), ("4ds-j", 22e9)])
def test_encoder_sizes_match_the_paper(name, published):
    encoder = count_parameters(get_preset(name))["encoder"]
    tolerance = 0.01 if name != "4ds-j" else 0.02  # "22B class"
    assert abs(encoder - published) / published < tolerance, encoder


def test_4ds_table_rows():
    rows = {name: (a.hidden_size, a.num_layers, a.ffn_hidden_size, a.num_attention_heads)
            for name, a in PRESETS.items()}
    assert rows["4ds-s"] == (384, 12, 1536, 6)
    assert rows["4ds-b"] == (768, 12, 3072, 12)
    assert rows["4ds-l"] == (1024, 24, 4096, 16)
    assert rows["4ds-h"] == (1280, 32, 5120, 16)
    assert rows["4ds-g"] == (1664, 48, 8192, 16)
    assert rows["4ds-e"] == (1792, 56, 15360, 16)
    assert rows["4ds-j"] == (6144, 48, 24576, 48)
    assert get_preset("4ds-b").num_tokens == 8 * 14 * 14


def test_list_cli_prints_every_preset_with_exact_counts(launch):
    proc = launch.run("-m", "megavid.models", "--list", env={"COLUMNS": "250"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name, arch in PRESETS.items():
        counts = count_parameters(arch)
        line = next(l for l in proc.stdout.splitlines() if f" {name} " in l)
        assert f"{counts['encoder']:,}" in line and f"{counts['decoder']:,}" in line
