"""The one mesh helper: sizes of 0 take the devices the other axis leaves, so one config fits 8 chips and 1 GPU."""
import jax
import pytest

from deliberate.mesh import make_mesh, mesh_shape


@pytest.mark.parametrize("data, fsdp, n, want", [
    (1, 0, 8, (1, 8)), (0, 0, 8, (1, 8)), (1, 0, 1, (1, 1)), (0, 2, 8, (4, 2)), (2, 0, 8, (2, 4)), (4, 2, 8, (4, 2)),
])
def test_zero_takes_what_the_other_axis_leaves(data, fsdp, n, want):
  assert mesh_shape(data, fsdp, n) == want


def test_meshes_on_the_simulated_devices():
  assert dict(make_mesh(1, 0).shape) == {"data": 1, "fsdp": jax.device_count()}
  assert dict(make_mesh(0, 2).shape) == {"data": jax.device_count() // 2, "fsdp": 2}
  with pytest.raises(ValueError, match=r"mesh: 4 x 4 \(data x fsdp\) needs 16 devices, have 8"):
    make_mesh(4, 4)
  with pytest.raises(ValueError, match="must be >= 0"):
    make_mesh(1, -1)
