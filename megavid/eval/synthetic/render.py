"""Render a ``SceneSpec`` with Mitsuba 3 (``scalar_rgb``) into frames and exact 4D labels.

Per frame the scene is loaded with the objects' vertices moved rigidly to that
frame's pose, then rendered twice: the image (``direct`` integrator; one point
light under the ceiling, so hard shadows, plus an ambient term emitted by every
surface and kept out of light sampling, so the image has no Monte Carlo noise;
``spp`` random positions per pixel for antialiasing) and a label pass (``aov`` integrator with one
sample at each pixel centre: a ``stratified`` sampler without jitter and a box
filter) giving the world position and shape index that pixel's centre ray hits.

* **Depth** is z-depth ``(R^T (p - c))_z`` from the position AOV. Mitsuba's own
  ``depth`` AOV is neither z nor range: its rays start on the near-clip plane, so
  it returns ``range - near_clip / cos(theta)`` (checked in the tests).
* **Point tracks**: query points are cast from random sub-pixel positions at frame
  0 (two thirds) or the middle frame (one third), half of them on objects; the hit
  point moves rigidly with whatever it hit and is projected with the camera.
* **Visibility** is a depth test against the scene at the track's exact
  projection: a ray from the camera centre towards the point must hit nothing
  closer than the point's range minus 0.1% (``VISIBILITY_TOLERANCE``); the point
  must also project inside the image and lie in front of the camera. Testing at the
  exact sub-pixel position, not the nearest pixel centre, keeps points near
  silhouettes and on grazing floors right.
* **Boxes** are modal: the pixel bounds of the pixels whose centre ray hits the
  object (``[x_min, y_min, x_max + 1, y_max + 1]``); absent where no pixel does.
"""

from __future__ import annotations

import numpy as np

from megavid.eval.synthetic.scene import FOV_DEG, ROOM_HALF, ROOM_HEIGHT, SceneSpec

VISIBILITY_TOLERANCE = 1e-3  # relative range
NEAR = 0.05  # metres: closer points count as not visible
KEY_INTENSITY = 40.0  # W/sr of the point light under the ceiling
AMBIENT = 0.3  # ambient radiance as a fraction of albedo
ROOM_TILES = 2  # texture repeats across each wall
_MITSUBA_FROM_OPENCV = np.diag([-1.0, -1.0, 1.0, 1.0])  # Mitsuba cameras: x left, y up


def mitsuba():
    """Mitsuba set to ``scalar_rgb``: plain C++, no LLVM/CUDA JIT, runs everywhere.

    One render thread: frames this small finish before a thread pool pays off (it
    halves the time per scene on 2 cores); ``write_synthetic`` runs scenes in
    parallel processes instead. The output does not depend on it.
    """
    try:
        import drjit as dr
        import mitsuba as mi
    except ImportError as err:
        raise ImportError("the synthetic 4D benchmark renders with Mitsuba 3: "
                          "pip install -e '.[eval]' (or pip install mitsuba)") from err
    if mi.variant() != "scalar_rgb":
        mi.set_variant("scalar_rgb")
        dr.set_thread_count(1)
    return mi


def _room_shapes(mi, spec: SceneSpec, bitmaps: dict) -> dict:
    """Floor, ceiling and walls as rectangles (Mitsuba's rectangle: [-1, 1]^2 in z = 0)."""
    h, s = ROOM_HEIGHT / 2, ROOM_HALF
    t = mi.ScalarTransform4f
    placements = {
        "floor": t().rotate([1, 0, 0], -90).scale([s, s, 1]),
        "ceiling": t().translate([0, ROOM_HEIGHT, 0]).rotate([1, 0, 0], 90).scale([s, s, 1]),
        "wall_0": t().translate([0, h, -s]).scale([s, h, 1]),
        "wall_1": t().translate([0, h, s]).rotate([0, 1, 0], 180).scale([s, h, 1]),
        "wall_2": t().translate([-s, h, 0]).rotate([0, 1, 0], 90).scale([s, h, 1]),
        "wall_3": t().translate([s, h, 0]).rotate([0, 1, 0], -90).scale([s, h, 1]),
    }
    return {f"room_{name}": {"type": "rectangle", "to_world": transform,
                             "bsdf": _material(mi, bitmaps[name], tiles=ROOM_TILES),
                             "emitter": _ambient(mi, bitmaps[f"ambient_{name}"],
                                                 tiles=ROOM_TILES)}
            for name, transform in placements.items()}


def _material(mi, bitmap, *, tiles: int) -> dict:
    texture = {"type": "bitmap", "bitmap": bitmap, "raw": True,
               "to_uv": mi.ScalarTransform4f().scale([tiles, tiles, 1])}
    return {"type": "twosided", "material": {"type": "diffuse", "reflectance": texture}}


def _ambient(mi, bitmap, *, tiles: int) -> dict:
    """Ambient light as emission ``AMBIENT * albedo``, seen by camera rays only.

    ``sampling_weight`` 0 keeps it out of light sampling, so the only sampled
    light is the (delta) key light and the image has no Monte Carlo noise.
    """
    texture = {"type": "bitmap", "bitmap": bitmap, "raw": True,
               "to_uv": mi.ScalarTransform4f().scale([tiles, tiles, 1])}
    return {"type": "area", "radiance": texture, "sampling_weight": 0.0}


def _object_mesh(mi, obj, frame: int, bitmap, ambient):
    """The object's mesh with its vertices placed at ``frame``'s pose (world space)."""
    pose = obj.poses[frame]
    verts = obj.mesh.vertices @ pose[:3, :3].T + pose[:3, 3]
    mesh = mi.Mesh(obj.name, vertex_count=len(verts), face_count=len(obj.mesh.faces),
                   has_vertex_normals=obj.mesh.normals is not None, has_vertex_texcoords=True,
                   props=_props(mi, bitmap, ambient))
    params = mi.traverse(mesh)
    params["vertex_positions"] = verts.astype(np.float32).ravel().tolist()
    params["faces"] = obj.mesh.faces.ravel().tolist()
    params["vertex_texcoords"] = obj.mesh.uvs.astype(np.float32).ravel().tolist()
    if obj.mesh.normals is not None:  # rotate the analytic normals with the object
        normals = obj.mesh.normals @ pose[:3, :3].T
        params["vertex_normals"] = normals.astype(np.float32).ravel().tolist()
    params.update()
    return mesh


def _props(mi, bitmap, ambient):
    props = mi.Properties()
    props["bsdf"] = mi.load_dict(_material(mi, bitmap, tiles=1))
    props["emitter"] = mi.load_dict(_ambient(mi, ambient, tiles=1))
    return props


def _sensor(mi, spec: SceneSpec, frame: int, *, spp: int, exact: bool) -> dict:
    """The camera of ``frame``; ``exact``: one sample at each pixel centre (label pass)."""
    to_world = spec.cam_to_world[frame] @ _MITSUBA_FROM_OPENCV
    sampler = ({"type": "stratified", "sample_count": 1, "jitter": False} if exact
               else {"type": "independent", "sample_count": spp})
    return {"type": "perspective", "fov": FOV_DEG, "fov_axis": "x",
            "to_world": mi.ScalarTransform4f(to_world.tolist()), "sampler": sampler,
            "film": {"type": "hdrfilm", "width": spec.size, "height": spec.size,
                     "pixel_format": "rgb", "rfilter": {"type": "box"}}}


def build_frame(mi, spec: SceneSpec, frame: int, bitmaps: dict, *, spp: int):
    """The Mitsuba scene of ``frame`` (its default sensor renders the image)."""
    scene = {"type": "scene",
             "integrator": {"type": "direct", "emitter_samples": 1, "bsdf_samples": 0},
             "sensor": _sensor(mi, spec, frame, spp=spp, exact=False),
             "key_light": {"type": "point", "position": spec.light.tolist(),
                           "intensity": KEY_INTENSITY}}
    scene.update(_room_shapes(mi, spec, bitmaps))
    for obj in spec.objects:
        scene[obj.name] = _object_mesh(mi, obj, frame, bitmaps[obj.name],
                                       bitmaps[f"ambient_{obj.name}"])
    return mi.load_dict(scene)


def to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Linear RGB -> 8-bit sRGB (IEC 61966-2-1 transfer curve)."""
    x = np.clip(linear, 0.0, 1.0)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def render_frames(spec: SceneSpec, *, spp: int, seed: int, labels: bool = True) -> dict:
    """Frames and per-pixel labels of every frame, plus the per-frame Mitsuba scenes.

    Returns ``video`` (T, H, W, 3) uint8, ``depth`` (T, H, W) float32 z-depth,
    ``ids`` (T, H, W) int16 (object index, -1 for the room), ``scenes`` (for ray casts).
    ``labels=False`` skips the label pass and returns ``video`` only (the same frames).
    """
    mi = mitsuba()
    textures = {**spec.room_textures, **{obj.name: obj.texture for obj in spec.objects}}
    bitmaps = {name: mi.Bitmap(tex) for name, tex in textures.items()}
    bitmaps.update({f"ambient_{name}": mi.Bitmap(tex * AMBIENT) for name, tex in
                    textures.items()})
    label_pass = mi.load_dict({"type": "aov", "aovs": "pp:position,si:shape_index"})
    frames, depths, ids, scenes = [], [], [], []
    for t in range(len(spec.cam_to_world)):
        scene = build_frame(mi, spec, t, bitmaps, spp=spp)
        image = np.array(mi.render(scene, seed=(seed * 1000 + t) % 2**32))
        frames.append(to_srgb8(image))
        if not labels:
            continue
        sensor = mi.load_dict(_sensor(mi, spec, t, spp=1, exact=True))
        aov = np.array(mi.render(scene, sensor=sensor, integrator=label_pass, seed=0))
        owner = np.array([_owner(s.id()) for s in scene.shapes()], np.int16)
        index = np.round(aov[..., 3]).astype(int)  # shape index + 1; 0 = no hit
        c2w = spec.cam_to_world[t]
        z = (aov[..., :3] - c2w[:3, 3]) @ c2w[:3, 2]  # (H, W) along the optical axis
        depths.append(np.where(index > 0, z, 0.0).astype(np.float32))
        ids.append(np.where(index > 0, owner[np.maximum(index - 1, 0)], -1).astype(np.int16))
        scenes.append(scene)
    if not labels:
        return {"video": np.stack(frames)}
    return {"video": np.stack(frames), "depth": np.stack(depths), "ids": np.stack(ids),
            "scenes": scenes}


def _owner(shape_id: str) -> int:
    return int(shape_id.split("_")[1]) if shape_id.startswith("object_") else -1


def cast(mi, scene, origin: np.ndarray, direction: np.ndarray) -> tuple[float, int, np.ndarray]:
    """``(range, owner, hit point)`` of the first hit along a ray (range inf if none)."""
    ray = mi.Ray3f(mi.Point3f(*origin.tolist()), mi.Vector3f(*direction.tolist()))
    si = scene.ray_intersect(ray)
    if not si.is_valid():
        return np.inf, -1, np.full(3, np.nan)
    return float(si.t), _owner(si.shape.id()), np.array(si.p, np.float64)
