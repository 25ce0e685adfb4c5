"""Prompt selection of L2P, DualPrompt and CODA-Prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.continual.learners import L2P, CodaPrompt, DualPrompt, scale_layers


def test_layers_scale_to_the_depth():
    assert scale_layers([0, 1], 12) == [0, 1]
    assert scale_layers([2, 3, 4], 6) == [1, 2]
    assert scale_layers([0, 1, 2, 3, 4], 4) == [0, 1]


def test_l2p_takes_the_top_k_keys_by_cosine():
    learner = L2P(width=8, pool=6, length=4, top_k=2, layers=[0, 2])
    query = torch.randn(3, 8)
    with torch.no_grad():  # keys 4 and 1 point along each query; the rest away from it
        learner.keys.copy_(-query[0].repeat(6, 1))
        learner.keys[4] = query[0]
        learner.keys[1] = query[0] * 0.9 + 0.1
    prefixes, loss = learner.select(query[:1])
    assert set(prefixes) == {0, 2}
    keys, values = prefixes[0]
    assert keys.shape == values.shape == (1, 2 * 2, 8)  # two prompts, each split in half
    torch.testing.assert_close(keys[0, :2], learner.prompts[0, 4, :2])
    torch.testing.assert_close(values[0, 2:], learner.prompts[0, 1, 2:])
    cos = F.cosine_similarity(query[:1], learner.keys[[4, 1]])
    torch.testing.assert_close(loss, (1 - cos).sum())


def test_dualprompt_trains_with_the_task_and_infers_by_the_nearest_key():
    learner = DualPrompt(width=8, tasks=3, g_length=2, g_layers=[0], e_length=4, e_layers=[0, 1])
    query = torch.randn(2, 8)
    with torch.no_grad():
        learner.e_keys.copy_(torch.stack([-query[0], query[0], query[1]]))
    train, loss = learner.select(query, task=0)
    torch.testing.assert_close(train[1][0], learner.e[1, [0, 0], :2])
    torch.testing.assert_close(loss, (1 - F.cosine_similarity(query, learner.e_keys[0:1])).mean())
    infer, _ = learner.select(query)
    torch.testing.assert_close(infer[1][0], learner.e[1, [1, 2], :2])
    assert infer[0][0].shape == (2, 1 + 2, 8), "G (length 2 -> 1) and E (4 -> 2) share layer 0"


def test_coda_weights_components_and_freezes_earlier_tasks():
    learner = CodaPrompt(width=8, tasks=2, components=4, length=2, layers=[0])
    query = torch.randn(2, 8)
    learner.begin_task(1)
    prefixes, _ = learner.select(query)
    keys, values = prefixes[0]
    alpha = F.cosine_similarity(
        query[:, None] * learner.attention[0][None], learner.keys[0][None], dim=-1
    )
    expected = torch.einsum("bm,mld->bld", alpha, learner.components[0])
    torch.testing.assert_close(torch.cat([keys, values], 1), expected)
    (keys.sum() + values.sum()).backward()
    grad = learner.components.grad[0].abs().sum((1, 2))
    assert (grad[:2] == 0).all() and (grad[2:] > 0).all(), "task 0's components are frozen"
    learner.zero_grad()
    learner.begin_task(0)
    sum(t.sum() for t in learner.select(query)[0][0]).backward()
    grad = learner.components.grad[0].abs().sum((1, 2))
    assert (grad[:2] > 0).all() and (grad[2:] == 0).all(), "later tasks' components are unused"
