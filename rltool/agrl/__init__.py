"""Attention-guided curriculum RL (AGRL): the model chooses what it reads next.

An article is cut into (key, value) pairs (`kv.py`; `articles.py` generates offline family-tree
articles whose derived facts are predictable only after their "root" facts have been read, so
reading order matters). At each step of an episode the policy writes a query (`episodes.py`); the
query's vector (`embed.py`: MiniLM, or the policy's own hidden states through a layer's q/k
projections) is compared by scaled dot product with the keys not yet used, and one key is chosen
by a temperature softmax over them (`selection.py`); its pair is appended to the context. The
episode's reward is the mean log-probability of the value tokens given everything read so far
(`reward.py`, `scoring.py`), minus a baseline's. Episodes whose reward beats the running
statistics are kept (`filter.py`). The environment (an article per episode, held-out articles) is
`article_env.py`, the rollout that ties these together `rollout.py` (algo=agrl);
the loop trains the query tokens with REINFORCE and a k3 KL to the frozen base model.
`evaluation.py` compares the learned ordering with random and article order on held-out articles.
"""
