"""Reward-hacking alarm: the training reward rises while a held-out score falls.

A generator optimised against differentiable rewards can learn to please the rewards
without getting better at the task (adversarial textures, over-saturation: SPEC 1.2's
reason for weight regularization). The held-out evaluators (the world's inspector
accuracy, or a held-out reward at scale) are not optimised, so a *divergence* between the
two is the cheap symptom to watch:

    at evaluation i, rising_i  = train_reward_i  > train_reward_{i-1}
                     falling_i = heldout_score_i < heldout_score_{i-1}
    streak_i = streak_{i-1} + 1 if (rising_i and falling_i) else 0
    the alarm fires at every evaluation with streak_i >= patience

`train_reward_i` should be an average over the iterations since the previous evaluation
(the engine passes exactly that), not one noisy batch. The comparison is strict and has no
tolerance: with the world's quick evaluation a patience of 1-2 fires on noise; 3 is the
default. The alarm only warns and marks the run; it never stops training.
"""

from __future__ import annotations

import math


class RewardHackingAlarm:
    """Streak detector over (train_reward, heldout_score) pairs, one pair per evaluation.

    Args:
        patience: consecutive diverging evaluations needed to fire (>= 1).

    `update` returns True when the alarm fires at this evaluation. Non-finite inputs
    reset the streak (they carry no trend). The whole state is a small JSON-able dict
    (`state_dict`) so a resumed run fires exactly when a straight run would.
    """

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.previous: tuple[float, float] | None = None
        self.streak = 0
        self.events: list[dict] = []  # one dict per firing: iteration, values, streak

    def update(self, iteration: int, train_reward: float, heldout_score: float) -> bool:
        current = (float(train_reward), float(heldout_score))
        if not all(math.isfinite(v) for v in current):
            self.previous, self.streak = None, 0
            return False
        if self.previous is not None and current[0] > self.previous[0] and current[1] < self.previous[1]:
            self.streak += 1
        else:
            self.streak = 0
        self.previous = current
        fired = self.streak >= self.patience
        if fired:
            self.events.append({"iteration": int(iteration), "train_reward": current[0],
                                "heldout_score": current[1], "streak": self.streak})
        return fired

    @property
    def fired(self) -> bool:
        return bool(self.events)

    def state_dict(self) -> dict:
        return {"previous": list(self.previous) if self.previous else None, "streak": self.streak,
                "events": list(self.events)}

    def load_state_dict(self, state: dict) -> None:
        prev = state.get("previous")
        self.previous = (float(prev[0]), float(prev[1])) if prev else None
        self.streak = int(state.get("streak", 0))
        self.events = list(state.get("events", []))
