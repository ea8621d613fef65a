"""Group-normalised advantages: GRPO, Dr.GRPO, equal-reward groups and excluded samples."""
import numpy as np
import pytest

from deliberate.rl.advantages import group_advantages


def test_grpo_normalisation_matches_formula():
  r = np.array([[0.0, 1.0, 3.0, 5.0], [3.0, 3.0, 4.0, 1.0]])
  adv, w, stats = group_advantages(r, eps=1e-6)
  want = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(adv, want, rtol=1e-6)
  np.testing.assert_array_equal(w, 1.0)
  assert stats["reward_max"] == 5.0 and stats["zero_advantage_frac"] == 0.0


def test_dr_grpo_does_not_scale():
  r = np.array([[0.0, 1.0, 2.0, 5.0]])
  adv, _, _ = group_advantages(r, scale_by_std=False)
  np.testing.assert_allclose(adv, r - 2.0, rtol=1e-6)


def test_equal_reward_group_is_exactly_zero_and_kept():
  r = np.array([[0.1] * 8, [0.0, 5.0, 0.0, 5.0, 0.0, 5.0, 0.0, 5.0]])
  adv, w, stats = group_advantages(r)
  assert np.all(adv[0] == 0.0) and np.all(w[0] == 1.0)
  np.testing.assert_allclose(np.abs(adv[1]), 1.0, rtol=1e-5)
  assert stats["zero_advantage_frac"] == 0.5 and stats["equal_reward_group_frac"] == 0.5


def test_excluded_samples_leave_statistics_and_get_zero_weight():
  r = np.array([[1.0, 2.0, 3.0, 100.0]])
  valid = np.array([[True, True, True, False]])
  adv, w, stats = group_advantages(r, valid=valid)
  ref, _, _ = group_advantages(r[:, :3])
  np.testing.assert_allclose(adv[0, :3], ref[0], rtol=1e-6)
  assert adv[0, 3] == 0.0 and w[0, 3] == 0.0 and stats["excluded_frac"] == 0.25


def test_flat_rewards_with_group_ids_match_grid():
  r = np.array([[0.0, 1.0, 4.0], [2.0, 2.0, 3.0]])
  order = np.array([4, 0, 2, 5, 1, 3])
  flat, gid = r.ravel()[order], np.repeat([7, 9], 3)[order]
  adv, _, _ = group_advantages(flat, gid)
  grid, _, _ = group_advantages(r)
  np.testing.assert_allclose(adv, grid.ravel()[order], rtol=1e-6)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match="group_ids"):
    group_advantages(np.zeros(4), np.zeros(3))
  with pytest.raises(ValueError, match=r"\[P, G\]"):
    group_advantages(np.zeros(4))
  with pytest.raises(ValueError, match="finite"):
    group_advantages(np.array([[0.0, np.nan]]))
