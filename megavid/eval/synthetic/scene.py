"""Random scene descriptions for the synthetic 4D benchmark: pure numpy, no renderer.

A scene is a textured room (floor, ceiling, four walls, so every camera ray hits
something and depth is valid everywhere), a few textured rigid objects (boxes and
spheres) sliding and turning on the floor near the centre, and a camera anywhere
in the room clear of them, sliding on a short straight line while looking at a
drifting random point of the room (so the training set's mean depth map is a weak
prior). World axes: y up, floor at y = 0, metres. Everything is a pure function of
the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOM_HALF = 8.0  # the room spans [-8, 8] m in x and z
ROOM_HEIGHT = 6.0
FOV_DEG = 60.0  # horizontal field of view
CAMERA_WALL_MARGIN = 0.5  # metres between the camera and the walls
CAMERA_HEIGHT = (0.4, 5.0)  # metres: the camera stays 0.4 m over the floor, 1 m under the ceiling
CAMERA_OBJECT_MARGIN = 0.5  # metres (x-z) between the camera and where any object reaches
MIN_LOOK_DISTANCE = 1.5  # metres from the camera to the point it looks at
LOOK_TURN_DEG = (5.0, 25.0)  # the look target drifts across the view by this angle
MAX_PITCH_DEG = 70.0  # the view stays this close to the horizon
CAMERA_TRIES = 100  # a draw passes about 2 times in 3


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
    paths: list[tuple[np.ndarray, np.ndarray, float]] = []  # (start, step, radius)
    for j in range(int(rng.integers(2, 5))):
        for _ in range(100):  # rejection: in the disc, 0.1 m apart over the whole clip
            if rng.random() < 0.5:
                half = rng.uniform(0.3, 0.65, size=3)
                mesh, radius, lift = box_mesh(half), float(np.linalg.norm(half[[0, 2]])), half[1]
            else:
                r = rng.uniform(0.35, 0.7)
                mesh, radius, lift = sphere_mesh(r), r, r
            start = rng.uniform(-1.5, 1.5, size=2)
            step = rng.normal(size=2)
            step *= rng.uniform(0.4, 1.2) / np.linalg.norm(step)  # metres over the clip
            # Straight lines: the ends decide the disc, the closest approach the gaps (for
            # every tau, not only the frames', so every frame count of a seed agrees).
            if np.linalg.norm(start + step) <= 1.5 and np.linalg.norm(start) <= 1.5 and all(
                    _closest_approach(start - s_o, step - st_o) > radius + r_o + 0.1
                    for s_o, st_o, r_o in paths):
                break
        else:
            break  # no room left for another object
        paths.append((start, step, radius))
        xz = start + tau[:, None] * step  # (T, 2)
        yaw = rng.uniform(0, 2 * np.pi) + tau * rng.uniform(-1.5, 1.5)
        position = np.stack([xz[:, 0], np.full(len(tau), lift), xz[:, 1]], -1)
        objects.append(ObjectSpec(f"object_{j}", mesh, make_texture(rng), _rigid(yaw, position)))
    return objects


def _closest_approach(offset: np.ndarray, velocity: np.ndarray) -> float:
    """``min |offset + tau velocity|`` over ``tau`` in [0, 1]."""
    tau = np.clip(-(offset @ velocity) / max(float(velocity @ velocity), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(offset + tau * velocity))


def look_at(origin: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world looking from ``origin`` at ``target``, world up +y."""
    forward = (target - origin) / np.linalg.norm(target - origin)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = right, down, forward, origin
    return out


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (...,) from points ``p`` (..., 2) to the segment ``a``-``b`` (2,)."""
    ab = b - a
    s = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + s[..., None] * ab), axis=-1)


def segment_distance(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> float:
    """The least distance between the 2D segments ``a0``-``a1`` and ``b0``-``b1``."""
    def side(p, q, r):  # sign of the turn p -> q -> r
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))
    if side(a0, a1, b0) * side(a0, a1, b1) < 0 and side(b0, b1, a0) * side(b0, b1, a1) < 0:
        return 0.0  # they cross
    return float(min(_point_segment_distance(np.stack([a0, a1]), b0, b1).min(),
                     _point_segment_distance(np.stack([b0, b1]), a0, a1).min()))


def object_reach(obj: ObjectSpec) -> tuple[np.ndarray, np.ndarray, float]:
    """``(start, end, radius)``: the object's centre slides from ``start`` to ``end`` (x, z)
    on a straight line, and no part of it is further than ``radius`` from it in x-z."""
    radius = float(np.linalg.norm(obj.mesh.vertices[:, [0, 2]], axis=1).max())
    return obj.poses[0, [0, 2], 3], obj.poses[-1, [0, 2], 3], radius


def _in_room(points: np.ndarray, margin: float, low: float, high: float) -> bool:
    """Whether every (..., 3) point lies within ``margin`` of the walls and in [low, high]."""
    return bool(np.all(np.abs(points[..., [0, 2]]) <= ROOM_HALF - margin)
                and np.all((points[..., 1] >= low) & (points[..., 1] <= high)))


def camera_path(rng: np.random.Generator, tau: np.ndarray,
                objects: list[ObjectSpec]) -> np.ndarray:
    """(T, 4, 4) camera-to-world: anywhere in the room, looking at a random point in it.

    The camera slides 0.3-1.5 m on a straight line, at least ``CAMERA_WALL_MARGIN``
    from the walls, at a height in ``CAMERA_HEIGHT``, and at least
    ``CAMERA_OBJECT_MARGIN`` in x-z from everywhere any object reaches over the clip
    (its centre's segment, widened by its radius). It looks at a target drawn
    uniformly in the room that drifts on a straight line across the view (the view
    turns by about ``LOOK_TURN_DEG``, so points do not stay still in the image), stays
    in the room, at least ``MIN_LOOK_DISTANCE`` away and within ``MAX_PITCH_DEG`` of
    the horizon (``look_at`` is unstable near vertical). Rejection sampling, decided
    on a fixed grid of the clip (not on ``tau``), so every frame count of a seed gives
    one motion; after ``CAMERA_TRIES`` misses, a fixed path in a corner is used.
    """
    reach = [object_reach(obj) for obj in objects]
    for _ in range(CAMERA_TRIES):
        path = _draw_camera(rng)
        if _camera_fits(*path, reach):
            break
    else:  # practically never (a draw fits about 2 times in 3): 7.8 m from the centre
        path = (np.array([6.0, 1.6, 6.0]), np.array([0.0, 0.0, -1.0]),
                np.array([0.0, 0.8, 0.0]), np.array([0.5, 0.0, -0.5]))
    start, move, target, drift = path
    origins = start + tau[:, None] * move
    return np.stack([look_at(o, target + t * drift) for o, t in zip(origins, tau)])


def _draw_camera(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``(start, move, target, drift)``: origin ``start + tau move``, target ``target + tau
    drift``."""
    side = ROOM_HALF - CAMERA_WALL_MARGIN
    start = rng.uniform([-side, CAMERA_HEIGHT[0], -side], [side, CAMERA_HEIGHT[1], side])
    move = _random_direction(rng) * rng.uniform(0.3, 1.5)
    target = rng.uniform([-ROOM_HALF, 0.0, -ROOM_HALF], [ROOM_HALF, ROOM_HEIGHT, ROOM_HALF])
    view = target - start
    across = np.cross(view, _random_direction(rng))  # a random direction across the view
    turn = np.radians(rng.uniform(*LOOK_TURN_DEG))
    drift = across / np.linalg.norm(across) * np.linalg.norm(view) * np.tan(turn)
    return start, move, target, drift


def _camera_fits(start, move, target, drift, reach) -> bool:
    """The constraints of ``camera_path`` over the whole clip (``reach``: ``object_reach``s)."""
    ends = np.stack([start, start + move])  # straight lines: their ends decide containment
    if not (_in_room(ends, CAMERA_WALL_MARGIN, *CAMERA_HEIGHT)
            and _in_room(target + drift, 0.0, 0.0, ROOM_HEIGHT)):
        return False
    if any(segment_distance(ends[0, [0, 2]], ends[1, [0, 2]], a, b) <= r + CAMERA_OBJECT_MARGIN
           for a, b, r in reach):
        return False
    grid = np.linspace(0.0, 1.0, 33)[:, None]
    view = target + grid * drift - (start + grid * move)  # (33, 3) camera -> target
    distance = np.linalg.norm(view, axis=1)
    return bool(distance.min() >= MIN_LOOK_DISTANCE and np.all(
        np.abs(view[:, 1]) <= distance * np.sin(np.radians(MAX_PITCH_DEG))))


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def sample_scene(rng: np.random.Generator, *, frames: int, size: int) -> SceneSpec:
    """A random scene of ``frames`` frames at ``size`` x ``size`` pixels.

    Motion is parametrised over the clip (``tau`` in [0, 1]), so a 16-frame and an
    8-frame render of one seed cover the same motion at different frame rates.
    """
    tau = np.linspace(0.0, 1.0, frames)
    room = {name: make_texture(rng) for name in
            ("floor", "ceiling", "wall_0", "wall_1", "wall_2", "wall_3")}
    objects = sample_objects(rng, tau)
    cams = camera_path(rng, tau, objects)
    focal = size / 2 / np.tan(np.radians(FOV_DEG) / 2)
    intrinsics = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    light = np.array([rng.uniform(-4, 4), 5.5, rng.uniform(-4, 4)])
    return SceneSpec(objects, room, cams, intrinsics, light, size)
