"""Prefix attention on tiny real timm ViTs."""

from __future__ import annotations

import pytest
import torch

from pipeline.continual.prefix import prefix_block, prompted_features, split_prompt
from tests.conftest import images


def test_no_prompt_is_the_plain_vit(tiny_vit):
    vit = tiny_vit().eval()
    x = images(3)
    torch.testing.assert_close(
        prompted_features(vit, x),
        vit.forward_head(vit.forward_features(x), pre_logits=True),
        rtol=0,
        atol=1e-5,
    )


def test_an_empty_prompt_leaves_a_block_unchanged(tiny_vit):
    vit = tiny_vit().eval()
    tokens = torch.randn(2, 5, 32)
    empty = torch.zeros(2, 0, 32)
    block = vit.blocks[0]
    torch.testing.assert_close(
        prefix_block(block, tokens, (empty, empty)), block(tokens), rtol=0, atol=1e-6
    )


def test_a_prefix_is_attended_as_extra_keys_and_values(tiny_vit):
    """A prefix equal to the tokens' own keys/values doubles them: softmax weights halve and
    the output is unchanged; a different prefix changes it."""
    vit = tiny_vit().eval()
    block = vit.blocks[0]
    tokens = torch.randn(2, 5, 32)
    h = block.norm1(tokens)
    k, v = block.attn.qkv(h).reshape(2, 5, 3, 32)[:, :, 1:].unbind(2)
    torch.testing.assert_close(
        prefix_block(block, tokens, (k, v)), block(tokens), rtol=0, atol=1e-5
    )
    other = prefix_block(block, tokens, (torch.randn(2, 3, 32), torch.randn(2, 3, 32)))
    assert (other - block(tokens)).abs().max() > 1e-3


def test_split_prompt_halves_keys_and_values():
    keys, values = split_prompt(torch.arange(8.0).view(1, 4, 2))
    assert keys.tolist() == [[[0, 1], [2, 3]]] and values.tolist() == [[[4, 5], [6, 7]]]
    with pytest.raises(ValueError, match="even length"):
        split_prompt(torch.zeros(1, 3, 2))
