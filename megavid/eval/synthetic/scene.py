"""Random scene descriptions for the synthetic 4D benchmark: pure numpy, no renderer.

A scene is a textured room (floor, ceiling, four walls, so every camera ray hits
something and depth is valid everywhere), a few textured rigid objects (boxes and
spheres) sliding and turning on the floor, and a camera orbiting the room's centre
on a smooth arc while looking at a slowly drifting target. World axes: y up, floor
at y = 0, metres. Everything is a pure function of the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOM_HALF = 8.0  # the room spans [-8, 8] m in x and z
ROOM_HEIGHT = 6.0
FOV_DEG = 60.0  # horizontal field of view


@dataclass
class MeshSpec:
    """A triangle mesh in its own (object) coordinates."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) uint32, counter-clockwise seen from outside
    uvs: np.ndarray  # (V, 2) float64
    normals: np.ndarray | None = None  # (V, 3) smooth shading normals; None: flat faces


@dataclass
class ObjectSpec:
    name: str
    mesh: MeshSpec
    texture: np.ndarray  # (R, R, 3) float32 linear RGB in [0, 1]
    poses: np.ndarray  # (T, 4, 4) object-to-world per frame (rigid)


@dataclass
class SceneSpec:
    objects: list[ObjectSpec]
    room_textures: dict[str, np.ndarray]  # "floor", "ceiling", "wall_0".."wall_3"
    cam_to_world: np.ndarray  # (T, 4, 4) OpenCV camera (x right, y down, z forward)
    intrinsics: np.ndarray  # (3, 3) pixels
    light: np.ndarray  # (3,) point-light position
    size: int


def make_texture(rng: np.random.Generator, res: int = 128) -> np.ndarray:
    """(res, res, 3) texture: a two-colour checker over multi-scale value noise.

    Checker edges give sharp corners to track, the noise gives texture at every
    scale, so no patch is flat after the MAE's per-tubelet normalisation.
    """
    colours = rng.uniform(0.1, 0.9, size=(2, 3))
    cells = int(rng.integers(2, 6))
    yy, xx = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
    checker = ((yy * cells // res + xx * cells // res) % 2)[..., None]  # (R, R, 1)
    base = np.where(checker == 1, colours[0], colours[1])
    noise = np.zeros((res, res, 3))
    for octave in (2, 4, 8, 16):
        grid = rng.uniform(-1, 1, size=(octave + 1, octave + 1, 3))
        noise += _upsample(grid, res) * (0.12 * 4 / octave) ** 0.5 * 0.35
    return np.clip(base + noise, 0.02, 0.98).astype(np.float32)


def _upsample(grid: np.ndarray, res: int) -> np.ndarray:
    """Bilinear upsampling of a (g + 1, g + 1, C) lattice to (res, res, C), seamless."""
    g = grid.shape[0] - 1
    pos = (np.arange(res) + 0.5) * g / res
    i0 = np.floor(pos).astype(int)
    w = (pos - i0)[:, None]
    rows = grid[i0] * (1 - w[..., None]) + grid[i0 + 1] * w[..., None]  # (R, g+1, C)
    return rows[:, i0] * (1 - w[None]) + rows[:, i0 + 1] * w[None]


def box_mesh(half: np.ndarray) -> MeshSpec:
    """An axis-aligned box with half-extents ``half``, one [0, 1]^2 UV square per face."""
    verts, faces, uvs = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3  # cyclic: u x v = +axis
            if sign < 0:
                u_axis, v_axis = v_axis, u_axis  # keep the winding outward
            base = len(verts)
            for cu, cv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[u_axis], p[v_axis] = sign, cu, cv
                verts.append(p * half)
                uvs.append(((cu + 1) / 2, (cv + 1) / 2))
            faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return MeshSpec(np.array(verts), np.array(faces, np.uint32), np.array(uvs))


def sphere_mesh(radius: float, rings: int = 12, segments: int = 24) -> MeshSpec:
    """A UV sphere (duplicated seam vertices so the texture wraps once around)."""
    theta = np.linspace(0, np.pi, rings + 1)  # from the top pole down
    phi = np.linspace(0, 2 * np.pi, segments + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")  # (rings+1, segments+1)
    normals = np.stack([np.sin(t) * np.cos(p), np.cos(t), -np.sin(t) * np.sin(p)], -1)
    uvs = np.stack([p / (2 * np.pi), 1 - t / np.pi], -1)
    idx = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    ring = np.repeat(np.arange(rings), segments)
    # Pole quads are triangles: drop the degenerate half (its two pole corners coincide).
    faces = np.concatenate([np.stack([a, b, c], 1)[ring < rings - 1],
                            np.stack([a, c, d], 1)[ring > 0]])
    normals = normals.reshape(-1, 3)
    return MeshSpec(normals * radius, faces.astype(np.uint32), uvs.reshape(-1, 2),
                    normals=normals)


def _rigid(yaw: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(T, 4, 4) transforms: rotate by ``yaw`` (T,) about +y, then translate by (T, 3)."""
    c, s = np.cos(yaw), np.sin(yaw)
    out = np.tile(np.eye(4), (len(yaw), 1, 1))
    out[:, 0, 0], out[:, 0, 2], out[:, 2, 0], out[:, 2, 2] = c, s, -s, c
    out[:, :3, 3] = position
    return out


def sample_objects(rng: np.random.Generator, tau: np.ndarray) -> list[ObjectSpec]:
    """2-4 objects sliding and turning within 1.5 m of the centre, kept apart."""
    objects: list[ObjectSpec] = []
    paths: list[tuple[np.ndarray, float]] = []
    for j in range(int(rng.integers(2, 5))):
        for _ in range(100):  # rejection: in the disc, trajectories 0.1 m apart
            if rng.random() < 0.5:
                half = rng.uniform(0.3, 0.65, size=3)
                mesh, radius, lift = box_mesh(half), float(np.linalg.norm(half[[0, 2]])), half[1]
            else:
                r = rng.uniform(0.35, 0.7)
                mesh, radius, lift = sphere_mesh(r), r, r
            start = rng.uniform(-1.5, 1.5, size=2)
            step = rng.normal(size=2)
            step *= rng.uniform(0.4, 1.2) / np.linalg.norm(step)  # metres over the clip
            xz = start + tau[:, None] * step  # (T, 2)
            if np.all(np.linalg.norm(xz, axis=1) <= 1.5) and all(
                    np.min(np.linalg.norm(xz - other, axis=1)) > radius + r_o + 0.1
                    for other, r_o in paths):
                break
        else:
            break  # no room left for another object
        paths.append((xz, radius))
        yaw = rng.uniform(0, 2 * np.pi) + tau * rng.uniform(-1.5, 1.5)
        position = np.stack([xz[:, 0], np.full(len(tau), lift), xz[:, 1]], -1)
        objects.append(ObjectSpec(f"object_{j}", mesh, make_texture(rng), _rigid(yaw, position)))
    return objects


def look_at(origin: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world looking from ``origin`` at ``target``, world up +y."""
    forward = (target - origin) / np.linalg.norm(target - origin)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = right, down, forward, origin
    return out


def camera_path(rng: np.random.Generator, tau: np.ndarray) -> np.ndarray:
    """(T, 4, 4) camera-to-world on an arc around the centre (15-40 degrees over the clip).

    The arc's radius (>= 3.1 m) keeps the camera clear of the objects (< 2.4 m out).
    """
    angle = rng.uniform(0, 2 * np.pi) + tau * rng.choice([-1, 1]) * np.radians(
        rng.uniform(15, 40))
    radius = rng.uniform(3.4, 4.4) + tau * rng.uniform(-0.3, 0.3)  # objects: < 2.4 m
    height = rng.uniform(1.2, 2.2) + tau * rng.uniform(-0.3, 0.3)
    target = rng.uniform(-0.4, 0.4, size=3) + [0.0, 0.4, 0.0]
    drift = rng.uniform(-0.4, 0.4, size=3) * [1.0, 0.3, 1.0]
    origins = np.stack([radius * np.cos(angle), height, radius * np.sin(angle)], -1)
    return np.stack([look_at(o, target + t * drift) for o, t in zip(origins, tau)])


def sample_scene(rng: np.random.Generator, *, frames: int, size: int) -> SceneSpec:
    """A random scene of ``frames`` frames at ``size`` x ``size`` pixels.

    Motion is parametrised over the clip (``tau`` in [0, 1]), so a 16-frame and an
    8-frame render of one seed cover the same motion at different frame rates.
    """
    tau = np.linspace(0.0, 1.0, frames)
    room = {name: make_texture(rng) for name in
            ("floor", "ceiling", "wall_0", "wall_1", "wall_2", "wall_3")}
    objects = sample_objects(rng, tau)
    cams = camera_path(rng, tau)
    focal = size / 2 / np.tan(np.radians(FOV_DEG) / 2)
    intrinsics = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    light = np.array([rng.uniform(-4, 4), 5.5, rng.uniform(-4, 4)])
    return SceneSpec(objects, room, cams, intrinsics, light, size)
