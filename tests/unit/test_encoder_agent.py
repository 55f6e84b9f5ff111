"""The encoder agent on the real all-MiniLM-L6-v2: pooling, the state cache, text actions, the PPO step."""
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from rltool.actors.encoder_agent import AttentionPool, EncoderAgent
from rltool.actors.state_cache import StateCache
from rltool.actors.token_encoder import EMBEDDED_MINILM, TokenEncoder
from rltool.algos.gae import gae
from rltool.config import EncoderConfig, HeadsConfig
from rltool.loops import PpoConfig
from rltool.ppo_train import Rollout, update

STATES = ["You are at row 1, column 1.", "The dealer shows an ace and you hold a soft seventeen."]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return TokenEncoder(EMBEDDED_MINILM, EncoderConfig())


def test_attention_pool_hand_computed_and_padding_changes_nothing():
    pool = AttentionPool(dim=2, heads=1)
    with torch.no_grad():
        pool.query.copy_(torch.tensor([[1.0, 0.0]]))
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [100.0, -50.0]]])  # (1, 3, 2); the third is padding
    mask = torch.tensor([[True, True, False]])
    # scores = [1, 0] / sqrt(2) = [0.70711, 0]; softmax = [0.66976, 0.33024]; out = 0.66976*[1,0] + 0.33024*[0,1]
    assert_close(pool(tokens, mask), torch.tensor([[0.66976, 0.33024]]), atol=1e-5, rtol=0)
    assert_close(pool(tokens[:, :2], mask[:, :2]), pool(tokens, mask), atol=0, rtol=0)


def test_padding_never_changes_the_agent_output(encoder):
    torch.manual_seed(0)
    agent = EncoderAgent(encoder, HeadsConfig(), num_actions=4)
    alone = agent.get_value(STATES[:1])  # no padding
    padded = agent.get_value(STATES)[:1]  # padded to the longer description
    assert_close(padded, alone, atol=1e-6, rtol=0)


def test_state_cache_returns_identical_embeddings_and_counts_hits(encoder):
    encoder.cache = StateCache(max_size=10)
    first, first_mask = encoder(STATES)
    second, second_mask = encoder(list(reversed(STATES)))
    assert torch.equal(first, second.flip(0)) and torch.equal(first_mask, second_mask.flip(0))
    alone, _ = encoder(STATES[:1])  # bitwise the same alone as next to a longer text
    assert torch.equal(alone[0], first[0, :alone.shape[1]])
    assert (encoder.cache.hits, encoder.cache.misses, len(encoder.cache)) == (3, 2, 2)
    assert encoder.cache.hit_rate() == 3 / 5
    assert not first.requires_grad  # frozen: no graph through the encoder


def test_state_cache_evicts_least_recently_used():
    cache = StateCache(max_size=2)
    calls = []
    compute = lambda texts: calls.append(list(texts)) or [t.upper() for t in texts]  # noqa: E731
    assert cache.get_many(["a", "b", "a"], compute) == ["A", "B", "A"]
    cache.get_many(["a"], compute)  # a is now the most recent
    cache.get_many(["c"], compute)  # evicts b
    cache.get_many(["a", "b"], compute)
    assert calls == [["a", "b"], ["c"], ["b"]]


def test_special_tokens_are_dropped_from_pooling(encoder):
    _, mask = encoder(STATES[:1])
    keep = TokenEncoder(EMBEDDED_MINILM, EncoderConfig(special_tokens="keep"))
    _, keep_mask = keep(STATES[:1])
    assert keep_mask.sum() == mask.sum() + 2  # [CLS] and [SEP]


def test_frozen_encoder_is_outside_the_optimizer_and_the_checkpoint(encoder):
    agent = EncoderAgent(encoder, HeadsConfig(), num_actions=2)
    assert not any(n.startswith("encoder.") for n, _ in agent.named_parameters())
    assert not any(k.startswith("encoder.") for k in agent.state_dict())


def test_fine_tuned_top_layers_start_equal_to_the_frozen_model_and_train():
    top = TokenEncoder(EMBEDDED_MINILM, EncoderConfig(trainable_layers=2))
    hidden, _ = top(STATES)
    model, tok = top.frozen[0], top.tokenizer
    with torch.no_grad():
        ref = model(**tok(STATES[1:], return_tensors="pt")).last_hidden_state[0]  # (T, H)
    assert_close(hidden[1, :ref.shape[0]], ref, atol=1e-4, rtol=1e-4)
    hidden.sum().backward()
    assert all(p.grad is not None for p in top.top.parameters())
    assert all(p.grad is None for p in model.embeddings.parameters())
    assert sum(p.numel() for p in top.parameters()) == sum(p.numel() for p in model.encoder.layer[-2:].parameters())


def test_text_actions_mask_unavailable_ones(encoder):
    torch.manual_seed(0)
    agent = EncoderAgent(encoder, HeadsConfig(actions="text"), num_actions=0)
    actions = [["open the red door", "open the green door", "open the blue door"], ["go north", "go south"]]
    mask = torch.tensor([[True, False, True], [True, True, False]])  # row 1's third slot is padding
    x = agent.features(["state one", "state two"])
    probs = torch.softmax(agent.logits(x, actions, mask), -1)
    assert probs[0, 1] == 0 and probs[1, 2] == 0
    assert_close(probs.sum(-1), torch.ones(2))
    sampled, logp, entropy, value = agent.get_action_and_value(["state one", "state two"] * 100, actions * 100,
                                                               mask.repeat(100, 1))
    assert mask.repeat(100, 1)[torch.arange(200), sampled].all()
    assert logp.shape == entropy.shape == value.shape == (200,) and torch.isfinite(entropy).all()
    # the score of an action depends on its text, not its slot: swapping the list swaps the logits
    swapped = agent.logits(x[:1], [actions[0][::-1]], torch.ones(1, 3, dtype=torch.bool))
    plain = agent.logits(x[:1], [actions[0]], torch.ones(1, 3, dtype=torch.bool))
    assert_close(swapped, plain.flip(-1))


def test_one_ppo_step_raises_the_probability_of_a_positive_advantage_action(encoder):
    torch.manual_seed(0)
    agent = EncoderAgent(encoder, HeadsConfig(), num_actions=4)
    state, acts = STATES[0], ("move left", "move down", "move right", "move up")
    mask = np.ones((1, 4), dtype=bool)
    with torch.no_grad():
        _, logp, _, value = agent.get_action_and_value([state] * 4, [acts] * 4, torch.ones(4, 4, dtype=torch.bool),
                                                       action=torch.tensor([2, 2, 0, 0]))
        before = torch.softmax(agent.logits(agent.features([state]), [acts], torch.ones(1, 4, dtype=torch.bool)), -1)[0]
    # T=4 steps of N=1 env: action 2 twice with advantage +1, action 0 twice with -1
    roll = Rollout(states=[[state]] * 4, actions_text=[[acts]] * 4, masks=[mask] * 4,
                   actions=torch.tensor([[2], [2], [0], [0]]), logp=logp[:, None], values=value[:, None],
                   rewards=torch.zeros(4, 1), next_values=torch.zeros(4, 1),
                   terminated=torch.zeros(4, 1, dtype=torch.bool), truncated=torch.zeros(4, 1, dtype=torch.bool))
    adv = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    ppo = PpoConfig(num_steps=4, num_minibatches=1, update_epochs=1, vf_coef=0.0, ent_coef=0.0, lr=1e-2)
    optimizer = torch.optim.Adam(agent.parameters(), lr=ppo.lr)
    metrics = update(agent, optimizer, roll, adv, adv + value[:, None], ppo, *losses())
    with torch.no_grad():
        after = torch.softmax(agent.logits(agent.features([state]), [acts], torch.ones(1, 4, dtype=torch.bool)), -1)[0]
    assert after[2] > before[2] and after[0] < before[0]
    assert metrics["loss/policy"] < 0 or math.isclose(metrics["loss/policy"], 0.0, abs_tol=1e-6)
    assert metrics["policy/clipfrac"] == 0.0  # first epoch: ratio 1 everywhere


def losses():
    from rltool.algos.losses import POLICY_LOSSES, LossParams
    from rltool.algos.value_losses import VALUE_LOSSES

    return POLICY_LOSSES["clip"], VALUE_LOSSES["clipped"], LossParams()


def test_gae_is_the_registered_piece_the_loop_uses():
    import rltool.ppo_train as loop

    assert loop.STEP_ADVANTAGES["gae"] is gae


def test_running_feature_norm_hand_computed():
    from rltool.actors.feature_norm import RunningFeatureNorm

    norm = RunningFeatureNorm(dim=2, momentum=0.5, clip=10.0)
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 13.0]])
    assert torch.equal(norm(x), x)  # identity before the first update
    norm.update(x)  # mean [3, 11], population var [8/3, 2]
    assert_close(norm.mean, torch.tensor([3.0, 11.0]))
    assert_close(norm.var, torch.tensor([8 / 3, 2.0]))
    assert_close(norm(x), torch.tensor([[-2 / math.sqrt(8 / 3), -1 / math.sqrt(2)], [0.0, -1 / math.sqrt(2)],
                                        [2 / math.sqrt(8 / 3), 2 / math.sqrt(2)]]), atol=1e-6, rtol=0)
    norm.update(torch.tensor([[7.0, 11.0], [7.0, 11.0]]))  # batch mean [7, 11], var [0, 0]; momentum 0.5
    assert_close(norm.mean, torch.tensor([5.0, 11.0]))
    assert_close(norm.var, torch.tensor([4 / 3, 1.0]))
    assert norm(torch.tensor([[1e6, 11.0]]))[0, 0] == 10.0  # clipped


def test_feature_norm_separates_states_that_share_most_words(encoder):
    # FrozenLake-like descriptions: pooled vectors nearly parallel; standardised, they are not
    torch.manual_seed(0)
    states = [f"You are on a frozen lake, at row {r}, column {c}. The goal is at row 4, column 4."
              for r in range(1, 5) for c in range(1, 5)]
    agent = EncoderAgent(encoder, HeadsConfig(), num_actions=4)  # feature_norm=running by default

    def mean_cosine():
        with torch.no_grad():
            x = torch.nn.functional.normalize(agent.feature_norm(agent.embed(states, agent.pool)), dim=-1)
        return float((x @ x.T)[~torch.eye(16, dtype=torch.bool)].mean())

    before = mean_cosine()
    agent.update_feature_norm(states)
    assert before > 0.9 and mean_cosine() < 0.1  # centred: what remains is what differs
    assert "feature_norm.mean" in agent.state_dict()  # checkpointed with the heads
    assert "feature_norm.mean" not in EncoderAgent(encoder, HeadsConfig(feature_norm="none"), 4).state_dict()


def test_a_dimension_constant_over_visited_states_is_not_blown_up():
    from rltool.actors.feature_norm import RunningFeatureNorm

    norm = RunningFeatureNorm(dim=2)  # the default floor: 1e-3 of the mean square
    norm.update(torch.tensor([[1.0, 2.0], [3.0, 2.0]]))  # mean [2, 2], var [1, 0]: dimension 1 never varied
    # variance floor = 1e-3 x the features' mean square, averaged over dimensions: 1e-3 x ((2^2+1) + (2^2+0)) / 2
    # = 0.0045; dimension 0 (var 1) is above it, dimension 1 is floored:
    # [3, 2.1] -> [(3-2)/sqrt(1 + 1e-8), (2.1-2)/sqrt(0.0045 + 1e-8)] = [1.0, 1.490712]  (not 0.1/1e-4 = 1000 -> 10)
    assert_close(norm(torch.tensor([[3.0, 2.1]])), torch.tensor([[1.0, 1.490712]]), atol=1e-5, rtol=0)
    one_state = RunningFeatureNorm(dim=2)
    one_state.update(torch.tensor([[0.6, -0.8]] * 4))  # bandit_text: a single description, every dimension constant
    x = torch.tensor([[0.6, -0.8]], requires_grad=True)
    (one_state(x) * torch.tensor([[1.0, 1.0]])).sum().backward()
    # d/dx = 1/sqrt(floor + eps), floor = 1e-3 x (0.36 + 0.64) / 2 = 5e-4: 44.72 (was 1/sqrt(1e-8) = 10,000)
    assert_close(x.grad, torch.full((1, 2), 1 / math.sqrt(5e-4 + 1e-8)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("where", ["description", "action"])
def test_an_empty_text_is_one_clear_error_not_nan(encoder, where):
    # an empty text leaves the pooling nothing but [CLS]/[SEP], which it ignores: a softmax over no token is nan
    agent = EncoderAgent(encoder, HeadsConfig(actions="text"), num_actions=0)
    states, actions = (["  "], [["go north", "go south"]]) if where == "description" else (["a room"], [["go north", ""]])
    with pytest.raises(ValueError, match=r"text ('  '|''): no token to read .*at least one word"):
        agent.get_value(states) if where == "description" else agent.logits(
            agent.features(states), actions, torch.ones(1, 2, dtype=torch.bool))
