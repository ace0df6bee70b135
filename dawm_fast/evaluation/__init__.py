"""Policy evaluation in Gymnasium envs and D4RL-normalized scores."""
from dawm_fast.data.scores import normalized_score
from dawm_fast.evaluation.rollout import EnvUnavailableError, EvalResult, evaluate_policy, make_env
from dawm_fast.evaluation.scoring import score_policy

__all__ = ["EvalResult", "EnvUnavailableError", "evaluate_policy", "make_env",
           "normalized_score", "score_policy"]
