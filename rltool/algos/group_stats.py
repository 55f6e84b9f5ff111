"""What share of a step's groups can teach anything: all-wrong, all-right and no-signal groups.

A group whose members all failed (or all succeeded) has no success contrast, and one whose shaped
rewards are all equal gets zero advantage under every group baseline (GRPO, Dr.GRPO, RLOO): its
rows cost a forward and backward and carry no gradient. When most groups are all-wrong the task is
too hard for the current policy (or exploration has collapsed); all-right means it is solved.
"""
from __future__ import annotations

from typing import Sequence

from rltool.records import Sample


def group_outcomes(samples: Sequence[Sample]) -> dict[str, float]:
    """Fractions of this step's groups (first attempts with a reward only; ERL's retries and
    reflections are not answers to the task as posed):

        rollout/groups_all_wrong    every member's success is 0
        rollout/groups_all_right    every member's success is > 0
        rollout/groups_no_signal    every member's shaped reward is equal (zero group advantage);
                                    includes both of the above when no shaping term differs

    mixed = 1 - all_wrong - all_right. {} when no group has a scored first attempt. Per rank: a
    group split across ranks is counted as its parts (GroupRollout keeps a group on one rank).
    """
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        if s.first_attempt and s.reward is not None:
            groups.setdefault(s.group, []).append(s)
    if not groups:
        return {}
    n = len(groups)
    wrong = sum(all(s.success == 0 for s in g) for g in groups.values())
    right = sum(all(s.success > 0 for s in g) for g in groups.values())
    flat = sum(max(s.reward for s in g) == min(s.reward for s in g) for g in groups.values())
    return {"rollout/groups_all_wrong": wrong / n, "rollout/groups_all_right": right / n,
            "rollout/groups_no_signal": flat / n}
