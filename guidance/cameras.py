"""Camera maths for UpFusion-style novel views: orbit, relative and query poses, rays, Plücker coordinates.

Conventions (shared by the UpFusion model and the toy multi-view world):

- World: y axis up; objects sit at the origin.
- A pose is a 4x4 float32 camera-to-world matrix ``c2w`` in the OpenCV convention: camera x points right,
  y points down (in the image), z points forward (the viewing direction); the last column is the camera
  centre.
- Intrinsics: square images of ``size`` pixels, focal length ``focal`` in pixels, principal point at
  ``size / 2``. Pixel (row i, column j) has its centre at (x = j + 0.5, y = i + 0.5).

UpFusion (Kani et al., "UpFusion: Novel View Diffusion from Unposed Sparse View Observations") feeds the
model no input poses; only the query camera is given, relative to the first input view (which becomes the
identity). ``relative_cameras`` / ``query_camera`` express poses that way and ``plucker_rays`` encodes the
query camera as per-pixel Plücker rays (d, o x d), as in UpSRT / SRT.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "absolute_cameras",
    "check_pose",
    "orbit_camera",
    "plucker_rays",
    "query_camera",
    "ray_grid",
    "relative_cameras",
]

_POSE_TOLERANCE = 1e-4


def orbit_camera(azimuth: float, elevation: float, distance: float) -> torch.Tensor:
    """A (4, 4) camera-to-world pose on a sphere of radius ``distance`` looking at the origin (degrees).

    The camera centre is ``distance * (cos(el) sin(az), sin(el), cos(el) cos(az))``: azimuth rotates about
    the world +y axis (azimuth 90 puts the camera on +x), azimuth 0 / elevation 0 puts it on +z looking
    toward -z, positive elevation is above the xz plane. The camera x axis stays horizontal
    (``(cos az, 0, -sin az)``) and its y axis points "down" in the image, so world up appears at the top of
    the image; this also holds at elevation +-90 (no degenerate look-at).
    """
    az, el = math.radians(float(azimuth)), math.radians(float(elevation))
    dtype = torch.float64
    centre = torch.tensor(
        [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=dtype
    ) * float(distance)
    forward = -torch.tensor(
        [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=dtype
    )  # z: toward the origin
    right = torch.tensor([math.cos(az), 0.0, -math.sin(az)], dtype=dtype)  # x: horizontal
    down = torch.linalg.cross(forward, right)  # y = z x x (right-handed OpenCV frame)
    pose = torch.eye(4, dtype=dtype)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, centre
    return pose.to(torch.float32)


def _rigid_inverse(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid (...,4,4) transforms: [R t; 0 1]^-1 = [R^T -R^T t; 0 1] (exact, no matrix solve)."""
    rotation_t = pose[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(pose)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -(rotation_t @ pose[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def relative_cameras(c2w: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Poses (N,4,4) in the reference camera's frame: ``inverse(reference) @ c2w`` (UpFusion: view 0 -> I)."""
    c2w = torch.as_tensor(c2w)
    reference = torch.as_tensor(reference, dtype=c2w.dtype, device=c2w.device)
    return _rigid_inverse(reference) @ c2w


def absolute_cameras(relative: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The inverse of ``relative_cameras``: world poses ``reference @ relative`` (round-trips)."""
    relative = torch.as_tensor(relative)
    reference = torch.as_tensor(reference, dtype=relative.dtype, device=relative.device)
    return reference @ relative


def query_camera(azimuth: float, elevation: float, distance: float) -> torch.Tensor:
    """A query pose (4,4) given relative to the first input view, returned in that view's camera frame.

    The first input (reference) view is taken as azimuth 0 / elevation 0 at ``distance`` from the scene
    centre, which lies at ``(0, 0, distance)`` on the reference camera's +z axis. The query camera orbits that
    centre at the same ``distance``: azimuth (degrees) turns about the reference camera's up axis (its -y
    axis) through the scene centre, positive azimuth moving the camera to the reference camera's right (+x);
    positive elevation moves it up (toward the reference camera's -y). The result is
    ``inverse(orbit_camera(0, 0, distance)) @ orbit_camera(azimuth, elevation, distance)``, so
    ``query_camera(0, 0, d)`` is the identity and ``query_camera(180, 0, d)`` sits at ``(0, 0, 2 d)`` looking
    back at the reference camera. This is how UpFusion names a novel view without any input pose.
    """
    reference = orbit_camera(0.0, 0.0, distance).to(torch.float64)
    query = orbit_camera(azimuth, elevation, distance).to(torch.float64)
    pose = _rigid_inverse(reference) @ query
    pose[3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    return pose.to(torch.float32)


def check_pose(matrix: object, parameter: str) -> torch.Tensor:
    """Validate a camera-to-world pose (4,4) (or a batch (...,4,4)) and return it as a float32 tensor.

    Raises ``ValueError`` naming ``parameter`` when the shape is not (..., 4, 4), a value is not finite, the
    rotation part is not orthonormal with determinant +1 (tolerance 1e-4), or the last row is not
    (0, 0, 0, 1).
    """
    try:
        pose = torch.as_tensor(matrix)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{parameter} must be a 4x4 camera-to-world matrix (tensor or nested list); "
            f"got {type(matrix).__name__}"
        ) from error
    if pose.ndim < 2 or tuple(pose.shape[-2:]) != (4, 4):
        raise ValueError(
            f"{parameter} must have shape (4, 4) or (..., 4, 4) (a camera-to-world matrix); "
            f"got {tuple(pose.shape)}"
        )
    if not (pose.is_floating_point() or pose.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{parameter} must hold real numbers; got dtype {pose.dtype}")
    pose = pose.to(torch.float32)
    if not torch.isfinite(pose).all():
        raise ValueError(f"{parameter} contains NaN or infinite values; a pose must be finite")
    check = pose.to(torch.float64)
    bottom = check[..., 3, :]
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if (bottom - expected).abs().max() > _POSE_TOLERANCE:
        raise ValueError(
            f"{parameter} must have last row (0, 0, 0, 1) (a rigid camera-to-world transform); "
            f"got {bottom.reshape(-1, 4)[0].tolist()}"
        )
    rotation = check[..., :3, :3]
    identity = torch.eye(3, dtype=torch.float64)
    error = (rotation.transpose(-1, -2) @ rotation - identity).abs().amax()
    if error > _POSE_TOLERANCE:
        raise ValueError(
            f"{parameter} must have an orthonormal rotation part (R^T R = I within {_POSE_TOLERANCE}); "
            f"max deviation {error.item():.3g}. Scale or shear is not allowed: use a rigid pose"
        )
    determinant = torch.linalg.det(rotation)
    if (determinant - 1.0).abs().max() > _POSE_TOLERANCE:
        raise ValueError(
            f"{parameter} must have a proper rotation (determinant +1, right-handed OpenCV frame); "
            f"got determinant {determinant.reshape(-1)[0].item():.3g} (a reflection is not allowed)"
        )
    return pose


def ray_grid(c2w: torch.Tensor, focal: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through each pixel centre: origins and unit directions, each (..., size, size, 3).

    Pixel (row i, column j) has its centre at (x = j + 0.5, y = i + 0.5); its camera-frame direction is
    ``((x - size/2) / focal, (y - size/2) / focal, 1)`` (OpenCV pinhole), rotated by the pose and normalised.
    """
    c2w = torch.as_tensor(c2w)
    if not c2w.is_floating_point():
        c2w = c2w.to(torch.float32)
    size = int(size)
    coords = (torch.arange(size, dtype=c2w.dtype, device=c2w.device) + 0.5 - size / 2) / float(focal)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # rows index y, columns index x
    camera_dirs = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (size, size, 3)
    rotation = c2w[..., None, None, :3, :3]  # (..., 1, 1, 3, 3)
    directions = (rotation @ camera_dirs[..., None]).squeeze(-1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = c2w[..., None, None, :3, 3].expand_as(directions)
    return origins, directions


def plucker_rays(c2w: torch.Tensor, focal: float, size: int) -> torch.Tensor:
    """Plücker rays (..., 6, size, size): channels (d, o x d), d the unit direction (UpSRT, UpFusion)."""
    origins, directions = ray_grid(c2w, focal, size)
    moments = torch.linalg.cross(
        origins, directions, dim=-1
    )  # o x d: independent of the point chosen on the ray
    rays = torch.cat([directions, moments], dim=-1)  # (..., size, size, 6)
    return rays.movedim(-1, -3).contiguous()
