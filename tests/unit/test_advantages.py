from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from rltool.algos.advantages import ADVANTAGES, grpo_advantage_reference
from rltool.schemas import algo_config

TESTED = {"grpo", "dr_grpo", "rloo", "reinforce_pp"}
NAN = float("nan")


def test_every_estimator_has_a_hand_computed_test():
    assert set(ADVANTAGES.names()) == TESTED


def t(*xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype)


# Shared batch: group 0 = [1, 0, 0, invalid nan], group 1 = [0, 2, 4], group 2 = [5] (singleton).
REWARDS = t(1.0, 0.0, 0.0, NAN, 0.0, 2.0, 4.0, 5.0)
GROUP = t(0, 0, 0, 0, 1, 1, 1, 2, dtype=torch.long)
VALID = t(1, 1, 1, 0, 1, 1, 1, 1, dtype=torch.bool)


def test_grpo():
    # g0 valid [1,0,0]: mean 1/3, dev [2/3,-1/3,-1/3], var (4/9+1/9+1/9)/2 = 1/3, std 0.57735
    #   -> [1.154701, -0.577350, -0.577350]  (biased std sqrt(2/9) would give 1.414214)
    # g1 [0,2,4]: mean 2, var (4+0+4)/2 = 4, std 2 -> [-1, 0, 1];  g2 singleton -> 0
    adv = ADVANTAGES["grpo"](REWARDS, GROUP, VALID, eps=0.0)
    assert_close(adv, t(1.154701, -0.577350, -0.577350, 0.0, -1.0, 0.0, 1.0, 0.0))


def test_grpo_eps_in_denominator():
    # [0, 2]: mean 1, std sqrt(2) = 1.414214; eps=1 -> (+-1) / 2.414214 = +-0.414214
    adv = ADVANTAGES["grpo"](t(0.0, 2.0), t(0, 0, dtype=torch.long), t(1, 1, dtype=torch.bool), eps=1.0)
    assert_close(adv, t(-0.414214, 0.414214))


def test_dr_grpo():
    # g0 mean 1/3 -> [2/3, -1/3, -1/3]; g1 mean 2 -> [-2, 0, 2]; singleton -> 0
    adv = ADVANTAGES["dr_grpo"](REWARDS, GROUP, VALID)
    assert_close(adv, t(2 / 3, -1 / 3, -1 / 3, 0.0, -2.0, 0.0, 2.0, 0.0))


def test_rloo():
    # g0: 1 - mean(0,0) = 1; 0 - mean(1,0) = -0.5 (twice)
    # g1: 0 - mean(2,4) = -3; 2 - mean(0,4) = 0; 4 - mean(0,2) = 3;  singleton -> 0
    adv = ADVANTAGES["rloo"](REWARDS, GROUP, VALID)
    assert_close(adv, t(1.0, -0.5, -0.5, 0.0, -3.0, 0.0, 3.0, 0.0))


def test_reinforce_pp():
    # a = r - mean_g: g0 [1,0] -> [0.5,-0.5]; g1 [3,1] -> [1,-1]; the nan sample is invalid.
    # batch over 4 valid: mean 0, var (0.25+0.25+1+1)/3 = 5/6, std 0.912871
    # -> [0.5, -0.5, 1, -1] / 0.912871 = [0.547723, -0.547723, 1.095445, -1.095445]
    rewards, group = t(1.0, 0.0, 3.0, 1.0, NAN), t(0, 0, 1, 1, 1, dtype=torch.long)
    valid = t(1, 1, 1, 1, 0, dtype=torch.bool)
    adv = ADVANTAGES["reinforce_pp"](rewards, group, valid, eps=0.0)
    assert_close(adv, t(0.547723, -0.547723, 1.095445, -1.095445, 0.0))


def test_reinforce_pp_zero_variance_groups_count_in_batch_std():
    # g0 [1,1] -> a [0,0] (kept at 0); g1 [2,0] -> a [1,-1].
    # batch over all 4 valid: mean 0, var (0+0+1+1)/3 = 2/3, std 0.816497 -> [0, 0, 1.224745, -1.224745]
    rewards, group = t(1.0, 1.0, 2.0, 0.0), t(0, 0, 1, 1, dtype=torch.long)
    adv = ADVANTAGES["reinforce_pp"](rewards, group, torch.ones(4, dtype=torch.bool), eps=0.0)
    assert_close(adv, t(0.0, 0.0, 1.224745, -1.224745))


@pytest.mark.parametrize("name", sorted(TESTED))
def test_zero_variance_group_gets_zero(name):
    # g0 = [0.1, 0.1, 0.1]: 0.3/3 is not exactly 0.1 in float32, so this also checks that
    # equal rewards give exactly 0 rather than round-off divided by a tiny std.
    rewards, group = t(0.1, 0.1, 0.1, 1.0, 0.0), t(0, 0, 0, 1, 1, dtype=torch.long)
    adv = ADVANTAGES[name](rewards, group, torch.ones(5, dtype=torch.bool))
    assert (adv[:3] == 0).all()
    assert (adv[3:] != 0).all()


@pytest.mark.parametrize("name", sorted(TESTED))
def test_invalid_samples_get_zero_and_do_not_shift_baseline(name):
    base = ADVANTAGES[name](REWARDS, GROUP, VALID)
    for junk in (0.0, 100.0, -3.0):
        rewards = REWARDS.clone()
        rewards[3] = junk
        adv = ADVANTAGES[name](rewards, GROUP, VALID)
        assert_close(adv, base)
        assert adv[3] == 0
    # dropping the invalid sample altogether gives the same advantages for the rest
    keep = VALID.clone()
    assert_close(ADVANTAGES[name](REWARDS[keep], GROUP[keep], VALID[keep]), base[keep])


@pytest.mark.parametrize("name", sorted(TESTED))
def test_group_ids_need_not_be_contiguous(name):
    dense = ADVANTAGES[name](REWARDS, GROUP, VALID)
    sparse = ADVANTAGES[name](REWARDS, GROUP * 1000 + 7, VALID)
    assert_close(sparse, dense)


def test_grpo_matches_reference_on_random_input():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = 48
        group = torch.randint(0, 10, (n,), generator=gen)  # (N,), uneven groups, some singletons
        # binary rewards half the time, so zero-variance groups occur
        rewards = torch.randn(n, generator=gen, dtype=torch.float64)  # (N,)
        if torch.rand(1, generator=gen) < 0.5:
            rewards = (rewards > 0).double()
        valid = torch.rand(n, generator=gen) > 0.2  # (N,)
        rewards[~valid] = float("nan")
        fast = ADVANTAGES["grpo"](rewards, group, valid)
        assert_close(fast, grpo_advantage_reference(rewards, group, valid))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="dr_grpo, grpo, reinforce_pp, rloo"):
        ADVANTAGES["gpro"]


def test_kl_in_reward_with_the_reinforce_pp_config():
    # conf/algo/reinforce_pp.yaml: kl_estimator k1, kl_placement reward. One group of four, kl_coef 0.1.
    # k1 summed over each row's tokens (engine logp - ref logp), padding masked:
    #   row 0: (-1 - -1.5) = 0.5;  row 1: (-2 - -1) = -1;  row 2: (-1 - -1) + (-3 - -3) = 0;  row 3: (-1 - -2) + (-1 - -2) = 2
    # rewards [1, 0, 1, 0] -> r - 0.1 * KL = [0.95, 0.1, 1.0, -0.2], mean 0.4625
    # a = r - mean = [0.4875, -0.3625, 0.5375, -0.6625]; one group, so the batch mean of a is 0 and whitening
    # divides by the unbiased std: sqrt((0.237656 + 0.131406 + 0.288906 + 0.438906) / 3) = 0.604669
    # -> [0.806224, -0.599502, 0.888915, -1.095637]
    from omegaconf import OmegaConf

    from rltool.records import Sample, collate
    from rltool.schemas import all_algo_keys
    from rltool.update import compute_advantages

    yaml = OmegaConf.load(Path(__file__).parents[2] / "conf" / "algo" / "reinforce_pp.yaml")
    del yaml["defaults"]
    algo = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(all_algo_keys()), yaml))
    algo.kl_coef = 0.1
    engine = [[-1.0], [-2.0], [-1.0, -3.0], [-1.0, -1.0]]
    ref = torch.tensor([[-1.5, 9.0], [-1.0, 9.0], [-1.0, -3.0], [-2.0, -2.0]])  # 9.0: padding, masked
    samples = [Sample(prompt_ids=[1], completion_ids=[5] * len(e), sample_logp=e, group=7, reward=r)
               for e, r in zip(engine, [1.0, 0.0, 1.0, 0.0])]
    batch = collate(samples, pad_id=0)
    batch.ref_logp = ref
    compute_advantages(samples, batch, SimpleNamespace(algo=algo))
    assert (algo.kl_estimator, algo.kl_placement) == ("k1", "reward")
    want = torch.tensor([0.806224, -0.599502, 0.888915, -1.095637])
    assert_close(torch.tensor([s.adv for s in samples]), want)
    assert_close(batch.adv, want[:, None] * batch.mask)  # (B, T): broadcast over each row's trained tokens


def test_kl_in_reward_reaches_rows_whose_advantage_the_rollout_preset():
    # AGRL's query rows and ERL's RAFT rows come with their advantage (r - b, or r2); with the KL in the
    # reward their return is r - kl_coef * sum_t KL_t, so the preset advantage drops by the same amount.
    # kl_coef 0.5, k1 = engine logp - ref logp: row 0: (-1 - -2) + (-1 - -1.5) = 1.5 -> 0.8 - 0.75 = 0.05
    # row 1 (per-token preset [1, 2]): (-2 - -1) = -1 over its one trained token -> [1.5, 2.5]
    from rltool.records import Sample, collate
    from rltool.update import compute_advantages

    algo = algo_config(kl_coef=0.5, kl_estimator="k1", kl_placement="reward")
    samples = [Sample(prompt_ids=[1], completion_ids=[5, 5], sample_logp=[-1.0, -1.0], group=0, reward=1.0, adv=0.8),
               Sample(prompt_ids=[1], completion_ids=[5, 5], sample_logp=[-2.0, 0.0], group=1, reward=0.0,
                      token_adv=[1.0, 2.0], completion_mask=[1, 0])]
    batch = collate(samples, pad_id=0)
    batch.ref_logp = torch.tensor([[-2.0, -1.5], [-1.0, 7.0]])  # 7.0 sits under completion_mask 0: not counted
    compute_advantages(samples, batch, SimpleNamespace(algo=algo))
    assert_close(batch.adv, torch.tensor([[0.05, 0.05], [1.5, 0.0]]))
