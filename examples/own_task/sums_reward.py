"""The reward for sums.jsonl: 1 when the last number in the reply is the row's `answer`, else 0."""
import re

from rltool.rewards import reward


@reward("right_sum")
def right_sum(completion, answer):
    numbers = re.findall(r"-?\d+", completion.replace(",", ""))
    return float(bool(numbers) and numbers[-1] == answer)
