"""Camera maths for UpFusion: orbit, relative and query poses, pose checks, rays and Plücker rays."""

from __future__ import annotations

import math

import pytest
import torch

from guidance.cameras import (
    absolute_cameras,
    check_pose,
    orbit_camera,
    plucker_rays,
    query_camera,
    ray_grid,
    relative_cameras,
)


def _poses() -> torch.Tensor:
    return torch.stack(
        [orbit_camera(a, e, 3.0 + 0.1 * k) for k, (a, e) in enumerate([(10, 5), (70, -20), (200, 35)])]
    )


def test_orbit_camera_front_position_and_axes():
    pose = orbit_camera(0.0, 0.0, 4.0)
    assert pose.shape == (4, 4) and pose.dtype == torch.float32
    torch.testing.assert_close(pose[:3, 3], torch.tensor([0.0, 0.0, 4.0]))
    torch.testing.assert_close(pose[:3, 2], torch.tensor([0.0, 0.0, -1.0]))  # looks toward -z
    torch.testing.assert_close(pose[:3, 0], torch.tensor([1.0, 0.0, 0.0]))  # right = world +x
    torch.testing.assert_close(pose[:3, 1], torch.tensor([0.0, -1.0, 0.0]))  # image down = world down


def test_orbit_camera_azimuth_elevation_and_look_at():
    pose = orbit_camera(90.0, 30.0, 2.0)
    centre = pose[:3, 3]
    torch.testing.assert_close(centre, torch.tensor([2 * math.cos(math.radians(30)), 1.0, 0.0]))
    torch.testing.assert_close(pose[:3, 2], -centre / centre.norm())  # looks at the origin
    assert pose[1, 1] < 0  # camera y (image down) has a negative world-y component: up stays up
    check_pose(pose, "pose")
    check_pose(orbit_camera(45.0, 90.0, 3.0), "top")  # no degenerate look-at at the pole


def test_relative_absolute_round_trip():
    poses = _poses()
    reference = orbit_camera(-30.0, 12.0, 2.5)
    relative = relative_cameras(poses, reference)
    torch.testing.assert_close(absolute_cameras(relative, reference), poses, atol=1e-5, rtol=0)
    own = relative_cameras(poses, poses[0])
    torch.testing.assert_close(own[0], torch.eye(4), atol=1e-5, rtol=0)  # view 0 becomes the identity


def test_relative_cameras_are_frame_invariant():
    poses = _poses()
    twist = orbit_camera(33.0, -17.0, 1.5)  # any rigid change of world frame
    torch.testing.assert_close(
        relative_cameras(twist @ poses, twist @ poses[0]),
        relative_cameras(poses, poses[0]),
        atol=1e-5,
        rtol=0,
    )


def test_query_camera_relative_to_first_view():
    d = 4.0
    torch.testing.assert_close(query_camera(0.0, 0.0, d), torch.eye(4), atol=1e-6, rtol=0)
    back = query_camera(180.0, 0.0, d)
    torch.testing.assert_close(back[:3, 3], torch.tensor([0.0, 0.0, 2 * d]), atol=1e-5, rtol=0)
    torch.testing.assert_close(back[:3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    right = query_camera(90.0, 0.0, d)  # positive azimuth: to the reference camera's right (+x)
    torch.testing.assert_close(right[:3, 3], torch.tensor([d, 0.0, d]), atol=1e-5, rtol=0)
    up = query_camera(0.0, 30.0, d)  # positive elevation: up in the reference image (-y)
    assert up[1, 3] < 0
    # Agrees with relative_cameras of orbit cameras whose first view is at azimuth/elevation 0.
    world = torch.stack([orbit_camera(0.0, 0.0, d), orbit_camera(50.0, 20.0, d)])
    torch.testing.assert_close(
        relative_cameras(world, world[0])[1], query_camera(50.0, 20.0, d), atol=1e-5, rtol=0
    )
    # Scene centre (0, 0, d) in the reference frame stays on every query camera's optical axis.
    pose = query_camera(-70.0, 25.0, d)
    to_centre = torch.tensor([0.0, 0.0, d]) - pose[:3, 3]
    torch.testing.assert_close(to_centre / to_centre.norm(), pose[:3, 2], atol=1e-5, rtol=0)


def test_check_pose_accepts_and_refuses():
    assert check_pose(orbit_camera(10, 10, 3).tolist(), "c2w").dtype == torch.float32
    scaled = orbit_camera(10, 10, 3)
    scaled[:3, :3] *= 2.0
    with pytest.raises(ValueError, match="query_pose.*orthonormal"):
        check_pose(scaled, "query_pose")
    mirrored = torch.eye(4)
    mirrored[0, 0] = -1.0
    with pytest.raises(ValueError, match="reference.*determinant"):
        check_pose(mirrored, "reference")
    with pytest.raises(ValueError, match=r"cam.*\(4, 4\)"):
        check_pose(torch.eye(3), "cam")
    bad_row = torch.eye(4)
    bad_row[3, 0] = 0.5
    with pytest.raises(ValueError, match="cam.*last row"):
        check_pose(bad_row, "cam")
    nan = torch.eye(4)
    nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="cam.*finite"):
        check_pose(nan, "cam")


def test_plucker_rays_identity_camera_by_hand():
    # size 2, focal 2: pixel centres x, y in {0.5, 1.5}, minus 1, over 2: +-0.25; d = (x, y, 1) / sqrt(1.125)
    rays = plucker_rays(torch.eye(4), focal=2.0, size=2)
    assert rays.shape == (6, 2, 2)
    n = math.sqrt(0.25**2 * 2 + 1)
    a, c = 0.25 / n, 1 / n
    expected_d = torch.tensor(
        [
            [[-a, a], [-a, a]],  # x grows with the column
            [[-a, -a], [a, a]],  # y grows with the row
            [[c, c], [c, c]],
        ]
    )
    torch.testing.assert_close(rays[:3], expected_d)
    torch.testing.assert_close(rays[3:], torch.zeros(3, 2, 2))  # origin at 0: moment o x d = 0


def test_plucker_rays_translated_camera_and_batch():
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([1.0, 0.0, 0.0])
    rays = plucker_rays(torch.stack([torch.eye(4), pose]), focal=2.0, size=2)
    assert rays.shape == (2, 6, 2, 2)
    d = rays[1, :3]
    moment = torch.linalg.cross(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand_as(d), d, dim=0)
    torch.testing.assert_close(rays[1, 3:], moment)
    torch.testing.assert_close(rays[:, :3].norm(dim=1), torch.ones(2, 2, 2))


def test_ray_grid_centre_ray_is_optical_axis():
    pose = orbit_camera(40.0, 20.0, 4.0)
    origins, directions = ray_grid(pose, focal=10.0, size=4)
    assert origins.shape == directions.shape == (4, 4, 3)
    torch.testing.assert_close(origins[2, 1], pose[:3, 3])
    centre = directions[1:3, 1:3].mean(dim=(0, 1))
    torch.testing.assert_close(centre / centre.norm(), pose[:3, 2], atol=1e-6, rtol=0)
