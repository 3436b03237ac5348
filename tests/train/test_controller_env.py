"""The Ray Train controller's poll interval that ``widedeep train`` sets: the variable is one Ray
Train reads and hands on to its controller, a user's own value wins, and it is short enough that
an epoch of a small job never waits for a poll."""

from __future__ import annotations

from widedeep.train.driver import CONTROLLER_ENV, apply_controller_env


def test_controller_poll_interval_is_a_propagated_ray_train_variable():
    from ray.train.v2._internal import constants

    assert set(CONTROLLER_ENV) <= constants.ENV_VARS_TO_PROPAGATE
    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR in CONTROLLER_ENV
    assert float(CONTROLLER_ENV[constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR]) < constants.DEFAULT_HEALTH_CHECK_INTERVAL_S


def test_a_users_own_setting_wins():
    env: dict[str, str] = {}
    apply_controller_env(env)
    assert env == CONTROLLER_ENV
    mine = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "5"}
    apply_controller_env(mine)
    assert mine == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "5"}
