"""Attention-guided curriculum RL (AGRL, issue #13): the model chooses what it reads next.

An article is cut into (key, value) token pairs (`kv.py`). At each step of an episode the policy
writes a query; the query is compared by scaled dot product with the keys not yet used, and one
key is chosen by a temperature softmax over them (`selection.py`); its (key, value) pair is
appended to the context. The episode's reward is the mean log-probability of the value tokens
given everything read so far, minus the same under a baseline (`reward.py`). Episodes whose
reward beats the running mean by k standard deviations (or the batch's top percentile) are kept
(`filter.py`), and a REINFORCE loss with a k3 KL penalty against the frozen base model trains the
query writer (`loss.py`). `articles.py` generates offline family-tree articles whose derived facts
are predictable only after their "root" facts have been read, so reading order matters.
This package holds only the pure, model-free pieces; no module here imports a model or vLLM.
"""
