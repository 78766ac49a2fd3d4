"""Shape primitives and organ geometry of the synthetic CT phantom (see ``phantom.py``).

Everything here is analytic and lives in *anatomical* millimetres with LPS axes: +x patient left,
+y posterior, +z superior; the body axis is x = y = 0 and the apex of the right diaphragm dome is z = 0.
Functions take coordinate arrays that broadcast against each other (usually ``z[:, None, None]``,
``y[None, :, None]``, ``x[None, None, :]``: the z, y, x order of SimpleITK arrays) and return arrays of
the broadcast shape, so the same anatomy is rasterized on any grid. Signed distances (``sdf``) are in mm,
negative inside (approximate away from the surface). Points are ``(x, y, z)`` numpy arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def rotation_matrix(rx: float, ry: float, rz: float) -> Array:
    """3x3 rotation (radians, applied x then y then z); its columns are the rotated x, y, z axes."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _smooth(a: Array, b: Array, k: float, sign: float) -> Array:
    """b + h (a - b + sign k (1 - h)), h = clip(1/2 + sign (a - b) / 2k): smooth max (+1) or min (-1)."""
    d = np.subtract(a, b)
    h = d * (0.5 * sign / k)
    h += 0.5
    np.clip(h, 0.0, 1.0, out=h)
    t = 1.0 - h
    t *= sign * k
    t += d
    t *= h
    t += b
    return t


def smin(a: Array, b: Array, k: float) -> Array:
    """Polynomial smooth minimum (union of two signed distances with a fillet of about ``k`` mm)."""
    return _smooth(a, b, k, -1.0)


def smax(a: Array, b: Array, k: float) -> Array:
    """Smooth maximum (intersection, or subtraction with ``-b``)."""
    return _smooth(a, b, k, 1.0)


def at(function: Callable[[Array, Array, Array], Array], points: Array) -> Array:
    """Evaluate ``function(z, y, x)`` at ``points`` of shape (..., 3) given as (x, y, z)."""
    points = np.asarray(points, dtype=float)
    return function(points[..., 2], points[..., 1], points[..., 0])


@dataclass(frozen=True)
class Ellipsoid:
    center: Array  # (x, y, z) mm
    semi_axes_mm: Array  # along the rotated local x, y, z axes
    rotation: Array  # 3x3, columns are the local axes in LPS

    def sdf(self, z: Array, y: Array, x: Array) -> Array:
        # Python floats keep float32 coordinate arrays in float32 (NumPy 2 promotion rules).
        (cx, cy, cz), r, a = self.center.tolist(), self.rotation.tolist(), self.semi_axes_mm.tolist()
        d = (x - cx, y - cy, z - cz)
        local = [r[0][i] * d[0] + r[1][i] * d[1] + r[2][i] * d[2] for i in range(3)]
        k0 = np.sqrt(sum((local[i] / a[i]) ** 2 for i in range(3)))
        k1 = np.sqrt(sum((local[i] / a[i] ** 2) ** 2 for i in range(3)))
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)

    def bbox_mm(self) -> tuple[Array, Array]:
        half = np.abs(self.rotation) @ self.semi_axes_mm
        return self.center - half, self.center + half


def ellipsoid(center, semi_axes_mm, angles_deg=(0.0, 0.0, 0.0)) -> Ellipsoid:
    return Ellipsoid(
        np.asarray(center, float), np.asarray(semi_axes_mm, float), rotation_matrix(*np.radians(angles_deg))
    )


@dataclass(frozen=True)
class FourierField:
    """Smooth random field: a sum of plane sine waves, standard deviation about 1."""

    waves: Array  # (K, 3) wave vectors (kx, ky, kz) in rad/mm
    phases: Array  # (K,)
    amplitude: float

    @classmethod
    def draw(cls, rng: np.random.Generator, n_modes: int, wavelength_mm: tuple[float, float]) -> FourierField:
        directions = rng.standard_normal((n_modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = np.exp(rng.uniform(np.log(wavelength_mm[0]), np.log(wavelength_mm[1]), n_modes))
        phases = rng.uniform(0.0, 2 * np.pi, n_modes)
        return cls(directions * (2 * np.pi / wavelengths)[:, None], phases, float(np.sqrt(2.0 / n_modes)))

    def __call__(self, z: Array, y: Array, x: Array) -> Array:
        if _are_grid_axes(z, y, x):
            return self._on_grid(z.ravel(), y.ravel(), x.ravel())
        total = 0.0
        for (kx, ky, kz), phase in zip(self.waves.tolist(), self.phases.tolist(), strict=True):
            total = total + np.sin(kx * x + ky * y + kz * z + phase)
        return self.amplitude * total

    def _on_grid(self, z: Array, y: Array, x: Array) -> Array:
        """Fast path on a grid: Im(Ez Ey Ex) summed over the K modes as one real (2K)-deep matrix product."""
        ex = np.exp(1j * (np.outer(self.waves[:, 0], x) + self.phases[:, None]))  # (K, nx)
        eyz = np.exp(1j * (np.outer(z, self.waves[:, 2])[:, None, :] + np.outer(y, self.waves[:, 1])[None]))
        left = np.concatenate([eyz.real, eyz.imag], axis=2).astype(np.float32)  # (nz, ny, 2K)
        right = (self.amplitude * np.concatenate([ex.imag, ex.real], axis=0)).astype(np.float32)  # (2K, nx)
        return (left.reshape(-1, left.shape[2]) @ right).reshape(len(z), len(y), len(x))  # one BLAS call


def _are_grid_axes(z: Array, y: Array, x: Array) -> bool:
    """True for the broadcast 1-D axes ``z[:, None, None], y[None, :, None], x[None, None, :]``."""
    shapes = [np.shape(a) for a in (z, y, x)]
    return all(len(shape) == 3 for shape in shapes) and (
        shapes[0][1:] == (1, 1) and shapes[1][::2] == (1, 1) and shapes[2][:2] == (1, 1)
    )


@dataclass(frozen=True)
class Tube:
    """A vessel segment: a cone frustum from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``)."""

    p0: Array
    p1: Array
    r0: float
    r1: float
    tree: str  # "portal" | "hepatic"
    generation: int
    intrahepatic: bool = True

    def distance(self, z: Array, y: Array, x: Array) -> tuple[Array, Array]:
        """(distance to the axis segment in mm, position along it in [0, 1])."""
        v, (x0, y0, z0) = (self.p1 - self.p0).tolist(), self.p0.tolist()
        dx, dy, dz = x - x0, y - y0, z - z0
        t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / (v[0] ** 2 + v[1] ** 2 + v[2] ** 2), 0.0, 1.0)
        return np.sqrt((dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2), t

    def sdf(self, z: Array, y: Array, x: Array) -> Array:
        distance, t = self.distance(z, y, x)
        return distance - (self.r0 + (self.r1 - self.r0) * t)

    def bbox_mm(self) -> tuple[Array, Array]:
        r = max(self.r0, self.r1)
        return np.minimum(self.p0, self.p1) - r, np.maximum(self.p0, self.p1) + r


@dataclass(frozen=True)
class Body:
    """Axial body outline (slightly irregular ellipse, flat back) and its wall layers."""

    half_width_mm: float
    half_depth_mm: float
    back_y_mm: float
    harmonics: Array  # (K, 2): relative amplitude and phase of cos(k * theta + phase), k = 2..K+1
    fat_mm: float
    muscle_mm: float
    z_wave: tuple[float, float]  # relative amplitude, phase of the slow cranio-caudal modulation

    def _radius(self, theta: Array, z: Array) -> Array:
        a, b = self.half_width_mm, self.half_depth_mm
        cos, sin = np.cos(theta), np.sin(theta)
        radius = a * b / np.sqrt((b * cos) ** 2 + (a * sin) ** 2)
        radius = np.where(sin > 0.05, np.minimum(radius, self.back_y_mm / np.maximum(sin, 0.05)), radius)
        for k, (amplitude, phase) in enumerate(self.harmonics.tolist(), start=2):
            radius = radius * (1.0 + amplitude * np.cos(k * theta + phase))
        return radius * (1.0 + self.z_wave[0] * np.sin(np.asarray(z) / 90.0 + self.z_wave[1]))

    def depth(self, z: Array, y: Array, x: Array) -> Array:
        """Depth below the skin along the ray from the body axis, mm (negative outside the body)."""
        return self._radius(np.arctan2(y, x), z) - np.hypot(x, y)

    def fat_thickness(self, y: Array, x: Array) -> Array:
        """Subcutaneous fat, thicker anteriorly (y < 0) than on the back."""
        return self.fat_mm * (1.0 - 0.35 * np.sin(np.arctan2(y, x)))

    def cavity_depth(self, z: Array, y: Array, x: Array) -> Array:
        """Depth inside the abdominal / thoracic cavity (inside skin, fat and muscle wall), mm."""
        return self.depth(z, y, x) - self.fat_thickness(y, x) - self.muscle_mm


@dataclass(frozen=True)
class Diaphragm:
    right_apex: Array  # (x, y, z) of the right dome
    left_apex: Array
    curvature_mm: float

    def z(self, y: Array, x: Array) -> Array:
        """Abdominal surface of the diaphragm (z, mm); the muscle is 4 mm thick above it."""
        domes = [
            apex[2]
            - ((x - apex[0]) ** 2 + np.where(y < apex[1], 0.6, 0.9) * (y - apex[1]) ** 2)
            / (2 * self.curvature_mm)
            for apex in (self.right_apex.tolist(), self.left_apex.tolist())
        ]
        recess = 0.4 * np.maximum(y - 25.0, 0.0)  # the posterior costophrenic recesses reach lower
        return np.maximum(domes[0], domes[1]) - recess


@dataclass(frozen=True)
class Spine:
    body_y_mm: float  # centre of the vertebral bodies
    body_semi_mm: tuple[float, float]  # (x, y)
    period_mm: float  # vertebra + disc height
    disc_mm: float
    phase_mm: float

    @property
    def canal_y_mm(self) -> float:
        return self.body_y_mm + self.body_semi_mm[1] + 10.0

    def level(self, z: Array) -> Array:
        """Position inside the current vertebra (mm from the disc's inferior end)."""
        return np.mod(z - self.phase_mm, self.period_mm)


@dataclass(frozen=True)
class Rib:
    side: int  # -1 patient right, +1 patient left
    z_start_mm: float  # at the costovertebral joint
    drop_mm: float  # how far it descends toward its anterior end
    start_deg: float  # angle from the posterior direction where it starts
    span_deg: float
    cartilage_from: float  # fraction of the span after which it is costal cartilage (>= 1: none)

    def angle_deg(self, y: Array, x: Array) -> Array:
        """Angle around the body axis from the posterior direction toward this rib's side, degrees."""
        angle = np.degrees(np.arctan2(self.side * x, y))
        return np.where(angle < -60.0, angle + 360.0, angle)

    def course(self, angle_deg: Array) -> tuple[Array, Array]:
        """(fraction along the rib in [0, 1] or NaN off its course, centre-line z) at ``angle_deg``."""
        fraction = (angle_deg - self.start_deg) / self.span_deg
        fraction = np.where((fraction >= 0.0) & (fraction <= 1.0), fraction, np.nan)
        return fraction, self.z_start_mm - self.drop_mm * np.abs(fraction) ** 1.4


def grow_tree(
    rng: np.random.Generator,
    roots: list[Tube],
    inside_sdf: Callable[[Array], Array],
    *,
    max_generation: int = 4,
    min_radius_mm: float = 0.9,
) -> list[Tube]:
    """Grow bifurcating branches from the terminal ``roots`` (generation >= 1), staying inside.

    Each child turns 20-45 degrees away from its parent, is 60-90 % as long and 65-80 % as thick; a child
    whose end or middle is not at least its radius inside (``inside_sdf`` of (n, 3) points < 0) is
    redrawn up to six times, then dropped. Deterministic for a given ``rng`` state.
    """
    tubes, frontier = list(roots), [tube for tube in roots if tube.generation >= 1]
    while frontier:
        parent = frontier.pop(0)
        if parent.generation >= max_generation or parent.r1 * 0.72 < min_radius_mm:
            continue
        axis = parent.p1 - parent.p0
        length = float(np.linalg.norm(axis))
        axis = axis / length
        e1 = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        azimuth0 = rng.uniform(0, 2 * np.pi)
        for child in range(2):
            for _ in range(6):
                turn, azimuth = rng.uniform(0.35, 0.8), azimuth0 + child * np.pi + rng.uniform(-0.6, 0.6)
                direction = np.cos(turn) * axis + np.sin(turn) * (np.cos(azimuth) * e1 + np.sin(azimuth) * e2)
                child_length, radius = (
                    max(8.0, length * rng.uniform(0.6, 0.9)),
                    parent.r1 * rng.uniform(0.65, 0.8),
                )
                end = parent.p1 + direction * child_length
                checks = inside_sdf(np.stack([end, parent.p1 + 0.5 * direction * child_length]))
                if checks[0] < -(radius + 1.5) and checks[1] < -radius:
                    tube = Tube(parent.p1, end, radius, radius * 0.9, parent.tree, parent.generation + 1)
                    tubes.append(tube)
                    frontier.append(tube)
                    break
    return tubes


@dataclass(frozen=True)
class Structure:
    """An organ to paint: its signed distance, bounding box (x, y, z mm) and HU inside (from its sdf)."""

    name: str
    sdf: Callable[[Array, Array, Array], Array]
    bbox_mm: tuple[Array, Array]
    shade: Callable[[Array, Array, Array, Array], Array]  # (sdf, z, y, x) -> HU


def _constant(value: float) -> Callable:
    return lambda sdf, z, y, x: np.full(np.shape(sdf), value, np.float32)


def _shell(wall_mm: float, wall_hu: float, inner_hu: float) -> Callable:
    return lambda sdf, z, y, x: np.where(sdf > -wall_mm, wall_hu, inner_hu).astype(np.float32)


@dataclass(frozen=True)
class Anatomy:
    """One patient: body, skeleton, organs, liver with its vessel trees, HU of each tissue."""

    body: Body
    diaphragm: Diaphragm
    spine: Spine
    ribs: tuple[Rib, ...]
    liver_lobes: tuple[Ellipsoid, ...]
    liver_field: FourierField  # surface irregularity (and parenchymal texture)
    visceral_margin: tuple[float, float, float]  # (x0, z0, slope): inferior margin z = z0 + slope (x - x0)
    organs: dict[str, Ellipsoid]
    aorta: tuple[float, float, float]  # x, y, radius (mm)
    ivc: tuple[float, float, float, float, float]  # x, y, semi-axis x, semi-axis y, top z (mm)
    hu: dict[str, float]
    textures: dict[str, FourierField]
    stomach_air_y_mm: float  # gas floats anteriorly (supine): the stomach lumen is air where y < this
    vessels: tuple[Tube, ...] = ()

    # -- liver ---------------------------------------------------------------------------------------
    def liver_envelope(self, z: Array, y: Array, x: Array) -> Array:
        """Liver outline (lobes, dome under the diaphragm, inside the cavity) with its irregularity."""
        lobes = [lobe.sdf(z, y, x) for lobe in self.liver_lobes]
        sdf = smin(smin(lobes[0], lobes[1], 22.0), lobes[2], 10.0) + 4.0 * self.liver_field(z, y, x)
        x0, z0, slope = self.visceral_margin  # the inferior margin rises from the right lobe's tip medially
        sdf = smax(sdf, (z0 + slope * (x - x0) - z) / np.hypot(1.0, slope), 12.0)
        sdf = smax(sdf, z - self.diaphragm.z(y, x), 8.0)
        return smax(sdf, 1.5 - self.body.cavity_depth(z, y, x), 6.0)

    def liver_sdf(self, z: Array, y: Array, x: Array) -> Array:
        """Liver parenchyma: the envelope minus the neighbours that indent it (IVC, kidneys, stomach...)."""
        sdf = self.liver_envelope(z, y, x)
        for name in ("gallbladder", "kidney_right", "stomach_body", "stomach_fundus", "spleen"):
            sdf = smax(sdf, -self.organs[name].sdf(z, y, x), 3.0)
        for neighbour in (self.ivc_sdf, self.aorta_sdf, self.paraspinal_sdf):
            sdf = smax(sdf, -neighbour(z, y, x), 2.0)
        spine_zone = np.hypot(x / 42.0, (y - self.spine.body_y_mm - 5.0) / 30.0) - 1.0
        return smax(sdf, -30.0 * spine_zone, 8.0)

    def liver_sdf_at(self, points: Array) -> Array:
        return at(self.liver_sdf, points)

    def liver_bbox_mm(self) -> tuple[Array, Array]:
        boxes = [lobe.bbox_mm() for lobe in self.liver_lobes]
        lo = np.min([box[0] for box in boxes], axis=0) - 6.0
        hi = np.max([box[1] for box in boxes], axis=0) + 6.0
        hi[2] = min(hi[2], self.diaphragm.right_apex[2] + 1.0)
        return lo, hi

    # -- big vessels and organs ----------------------------------------------------------------------
    def ivc_sdf(self, z: Array, y: Array, x: Array) -> Array:
        cx, cy, ax, ay, top = self.ivc
        return np.maximum((np.hypot((x - cx) / ax, (y - cy) / ay) - 1.0) * min(ax, ay), z - top)

    def paraspinal_sdf(self, z: Array, y: Array, x: Array) -> Array:
        """Erector spinae on both sides, from the spinal canal to under the back's fat."""
        back = self.body.back_y_mm - 0.65 * self.body.fat_mm - 3.0
        front = self.spine.canal_y_mm - 6.0
        centre, half = (front + back) / 2, (back - front) / 2
        return (np.hypot((np.abs(x) - 30.0) / 24.0, (y - centre) / half) - 1.0) * min(24.0, half) + 0.0 * z

    def aorta_sdf(self, z: Array, y: Array, x: Array) -> Array:
        cx, cy, radius = self.aorta
        return np.hypot(x - cx, y - cy) - radius + 0.0 * z

    def _abdominal(self, name: str) -> Callable:
        organ = self.organs[name]

        def sdf(z, y, x):
            inside = np.maximum(organ.sdf(z, y, x), z - self.diaphragm.z(y, x))
            return np.maximum(inside, 1.0 - self.body.cavity_depth(z, y, x))

        return sdf

    def heart_sdf(self, z: Array, y: Array, x: Array) -> Array:
        return np.maximum(self.organs["heart"].sdf(z, y, x), self.diaphragm.z(y, x) + 4.0 - z)

    def spleen_sdf(self, z: Array, y: Array, x: Array) -> Array:
        return smax(self._abdominal("spleen")(z, y, x), -self.organs["spleen_hilum"].sdf(z, y, x), 4.0)

    def stomach_sdf(self, z: Array, y: Array, x: Array) -> Array:
        return smin(
            self._abdominal("stomach_fundus")(z, y, x), self._abdominal("stomach_body")(z, y, x), 12.0
        )

    def _stomach_hu(self, sdf: Array, z: Array, y: Array, x: Array) -> Array:
        lumen = np.where(y < self.stomach_air_y_mm, self.hu["air"], self.hu["fluid"])
        return np.where(sdf > -4.0, self.hu["stomach_wall"], lumen).astype(np.float32)

    def structures(self) -> list[Structure]:
        """Organs in painting order (later ones win where they overlap)."""
        hu, organs = self.hu, self.organs
        (cx, cy, radius), (ix, iy, iax, iay, top) = self.aorta, self.ivc
        result = [
            Structure(
                "heart", self.heart_sdf, organs["heart"].bbox_mm(), _shell(9.0, hu["myocardium"], hu["blood"])
            ),
            Structure(
                "aorta",
                self.aorta_sdf,
                (np.array([cx - radius, cy - radius, -1e4]), np.array([cx + radius, cy + radius, 1e4])),
                _constant(hu["aorta"]),
            ),
            Structure(
                "ivc",
                self.ivc_sdf,
                (np.array([ix - iax, iy - iay, -1e4]), np.array([ix + iax, iy + iay, top])),
                _constant(hu["ivc"]),
            ),
        ]
        for side in ("right", "left"):
            kidney, sinus = organs[f"kidney_{side}"], organs[f"sinus_{side}"]
            result += [
                Structure(
                    f"kidney_{side}",
                    self._abdominal(f"kidney_{side}"),
                    kidney.bbox_mm(),
                    _shell(6.0, hu["kidney_cortex"], hu["kidney_medulla"]),
                ),
                Structure(
                    f"sinus_{side}",
                    lambda z, y, x, s=sinus, k=kidney: np.maximum(s.sdf(z, y, x), k.sdf(z, y, x) + 3.0),
                    sinus.bbox_mm(),
                    _constant(hu["sinus_fat"]),
                ),
            ]
        boxes = [organs[name].bbox_mm() for name in ("stomach_fundus", "stomach_body")]
        return result + [
            Structure("spleen", self.spleen_sdf, organs["spleen"].bbox_mm(), _constant(hu["spleen"])),
            Structure(
                "stomach",
                self.stomach_sdf,
                (np.minimum(boxes[0][0], boxes[1][0]), np.maximum(boxes[0][1], boxes[1][1])),
                self._stomach_hu,
            ),
            Structure(
                "gallbladder",
                self._abdominal("gallbladder"),
                organs["gallbladder"].bbox_mm(),
                _shell(2.0, hu["stomach_wall"], hu["bile"]),
            ),
        ]


def _draw_hu(rng: np.random.Generator) -> dict[str, float]:
    """Portal-venous-phase attenuation of each tissue (HU), jittered per patient."""
    ranges = {
        "liver": (100, 120),
        "portal": (165, 185),
        "hepatic": (150, 170),
        "aorta": (170, 190),
        "ivc": (140, 155),
        "spleen": (105, 120),
        "kidney_cortex": (150, 175),
        "kidney_medulla": (95, 115),
        "muscle": (45, 55),
        "fat": (-110, -90),
        "skin": (25, 40),
        "cancellous": (380, 470),
        "cortical": (750, 900),
        "disc": (80, 100),
        "csf": (5, 20),
        "lung": (-870, -840),
        "blood": (150, 170),
        "myocardium": (90, 105),
        "stomach_wall": (60, 80),
        "fluid": (5, 20),
        "bile": (0, 15),
        "bowel": (30, 45),
        "sinus_fat": (-70, -50),
        "cartilage": (110, 180),
    }
    hu = {name: round(float(rng.uniform(*limits)), 1) for name, limits in ranges.items()}
    hu["air"] = -1000.0
    return hu


def _draw_body(rng: np.random.Generator) -> tuple[Body, Spine, Diaphragm]:
    u = rng.uniform
    half_depth = u(106.0, 120.0)
    back_y = half_depth * u(0.9, 0.95)
    body = Body(
        u(150.0, 165.0),
        half_depth,
        back_y,
        np.column_stack([u(0, 0.02, 4), u(0, 2 * np.pi, 4)]),
        fat_mm=u(12.0, 26.0),
        muscle_mm=u(9.0, 13.0),
        z_wave=(u(0, 0.025), u(0, 2 * np.pi)),
    )
    spine = Spine(
        back_y - u(66.0, 72.0), (u(22.0, 26.0), u(16.0, 19.0)), u(34.0, 38.0), u(7.0, 9.0), u(0, 38.0)
    )
    diaphragm = Diaphragm(
        np.array([-55 + u(-5, 5), u(-5, 10), 0.0]),
        np.array([55 + u(-5, 5), u(0, 10), -u(8, 18)]),
        u(70.0, 90.0),
    )
    return body, spine, diaphragm


def _draw_ribs(rng: np.random.Generator) -> tuple[Rib, ...]:
    """Ribs 7 to 12 on each side; 7-10 end in costal cartilage, 11-12 are short and floating."""
    ribs = []
    for side in (-1, 1):
        z_start = 25.0 + rng.uniform(-5, 5)
        for k in range(6):
            ribs.append(
                Rib(
                    side,
                    z_start,
                    100.0 - 6.0 * k + rng.uniform(-8, 8),
                    18.0,
                    165.0 - 17.0 * k + rng.uniform(-5, 5),
                    0.78 if k <= 3 else 2.0,
                )
            )
            z_start -= rng.uniform(22.0, 26.0)
    return tuple(ribs)


def _draw_organs(rng: np.random.Generator, body: Body, spine: Spine) -> dict[str, Ellipsoid]:
    u = rng.uniform
    kx = float(np.clip((body.half_width_mm - body.fat_mm - body.muscle_mm) / 125.0, 0.92, 1.08))
    yk = spine.body_y_mm + 8.0
    kidney_semi = np.array([26.0, 22.0, 52.0])
    organs = {
        "kidney_right": ellipsoid(
            [-70 * kx, yk, -135 + u(-8, 8)], kidney_semi * u(0.92, 1.08, 3), (-10, 12, 0)
        ),
        "kidney_left": ellipsoid(
            [72 * kx, yk, -120 + u(-8, 8)], kidney_semi * u(0.92, 1.08, 3), (-10, -12, 0)
        ),
    }
    for side, medial in (("right", 1.0), ("left", -1.0)):
        organs[f"sinus_{side}"] = ellipsoid(
            organs[f"kidney_{side}"].center + [14 * medial, -4, 0], [10, 9, 24]
        )
    spleen_center = np.array([88 * kx, 40.0, -48 + u(-8, 8)])
    organs["spleen"] = ellipsoid(spleen_center, np.array([22.0, 52.0, 48.0]) * u(0.85, 1.15), (0, 0, 24))
    organs["spleen_hilum"] = ellipsoid(spleen_center + [-24, -11, 0], [20, 35, 40], (0, 0, 24))
    organs["stomach_fundus"] = ellipsoid([50 * kx, 12, -40], np.array([36.0, 34.0, 36.0]) * u(0.85, 1.1))
    organs["stomach_body"] = ellipsoid(
        [42 * kx, -24, -92], np.array([30.0, 26.0, 42.0]) * u(0.85, 1.1), (-25, 0, 0)
    )
    organs["heart"] = ellipsoid([25, -38, 50], [60, 48, 50], (0, 0, 30))
    return organs


def _vessel_roots(anatomy: Anatomy, place: Callable) -> list[Tube]:
    """Main portal and hepatic vein branches (generation >= 1 are grown further)."""
    ix, iy, _, _, _ = anatomy.ivc
    hilum, right, left = place([-20, -12, -92]), place([-52, -2, -82]), place([5, -30, -78])
    return [
        Tube(np.array([2.0, 0.0, -135.0]), hilum, 7.5, 7.0, "portal", 0, intrahepatic=False),
        Tube(hilum, right, 6.5, 6.0, "portal", 0),
        Tube(hilum, left, 5.5, 5.0, "portal", 0),
        Tube(right, place([-70, -35, -62]), 4.8, 4.5, "portal", 1),
        Tube(right, place([-88, 25, -92]), 4.8, 4.5, "portal", 1),
        Tube(left, place([25, -50, -55]), 4.5, 4.2, "portal", 1),
        Tube(left, place([40, -38, -62]), 4.0, 3.8, "portal", 1),
        Tube(np.array([ix - 8, iy + 2, -14.0]), place([-85, 20, -60]), 6.0, 5.0, "hepatic", 1),
        Tube(np.array([ix + 2, iy - 8, -12.0]), place([-38, -45, -62]), 5.0, 4.5, "hepatic", 1),
        Tube(np.array([ix + 8, iy - 4, -12.0]), place([20, -35, -38]), 4.5, 4.0, "hepatic", 1),
    ]


# Liver lobes before scaling: centre (x, y, z) and semi-axes, mm (right lobe, left lobe, caudate).
_LOBES_MM = (
    ((-62, 8, -70), (70.0, 84.0, 84.0)),
    ((15, -45, -42), (60.0, 30.0, 30.0)),
    ((-8, 0, -50), (16.0, 16.0, 28.0)),
)


def _draw_liver(rng: np.random.Generator) -> dict:
    u = rng.uniform
    return {
        "shift": np.array([u(-4, 4), u(-4, 4), 0.0]),
        "semi": (u(0.95, 1.05, 3), u(0.8, 1.15, 3), np.ones(3)),
        "angles": (
            (u(-5, 5), 15 + u(-5, 5), -10 + u(-5, 5)),
            (u(-5, 5), 10 + u(-5, 5), -20 + u(-8, 8)),
            (0, 0, 0),
        ),
        "margin": (-100.0, 0.0, -165.0 + u(-8, 8)),
        "slope": u(0.7, 0.9),
        "gallbladder": u(0.8, 1.2),
        "field": FourierField.draw(rng, 8, (40.0, 120.0)),
        "volume_ml": u(1300.0, 1750.0),
    }


def _placer(scale: float, shift: Array) -> Callable:
    """Liver-relative placement: scaled about a point under the right dome, then shifted."""
    ref = np.array([-30.0, 0.0, 0.0])
    return lambda point: ref + scale * (np.asarray(point, float) - ref) + shift


def _with_liver(anatomy: Anatomy, draws: dict, scale: float) -> Anatomy:
    place = _placer(scale, draws["shift"])
    lobes = tuple(
        ellipsoid(place(centre), scale * np.array(semi) * factors, angles)
        for (centre, semi), factors, angles in zip(_LOBES_MM, draws["semi"], draws["angles"], strict=True)
    )
    margin = place(draws["margin"])
    gallbladder = ellipsoid(
        place([-35, -48, -108]), np.array([14.0, 15.0, 32.0]) * draws["gallbladder"], (-40, 0, 0)
    )
    return dataclasses.replace(
        anatomy,
        liver_lobes=lobes,
        liver_field=draws["field"],
        visceral_margin=(float(margin[0]), float(margin[2]), draws["slope"]),
        organs={**anatomy.organs, "gallbladder": gallbladder},
    )


def _liver_samples(anatomy: Anatomy, step_mm: float) -> tuple[tuple[Array, Array, Array], Array]:
    lo, hi = anatomy.liver_bbox_mm()
    z, y, x = (np.arange(lo[i], hi[i], step_mm, dtype=np.float32) for i in (2, 1, 0))
    return (z, y, x), anatomy.liver_sdf(z[:, None, None], y[None, :, None], x[None, None, :]) < 0


def _liver_volume_ml(anatomy: Anatomy, step_mm: float = 4.0) -> float:
    """Volume of ``liver_sdf < 0`` sampled every ``step_mm``."""
    return float(_liver_samples(anatomy, step_mm)[1].sum()) * step_mm**3 / 1000.0


def liver_z_range_mm(anatomy: Anatomy, step_mm: float = 3.0) -> tuple[float, float]:
    """Lowest and highest z (mm) of the liver, sampled every ``step_mm``."""
    (z, _, _), inside = _liver_samples(anatomy, step_mm)
    levels = z[inside.any(axis=(1, 2))]
    return float(levels.min()), float(levels.max())


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """One adult patient drawn from ``rng`` (portal venous phase); the same draws on any grid.

    The liver is scaled until its volume matches a total liver volume drawn in 1300-1750 mL (the painted
    liver, with its neighbours' voxels taken out, comes out a few per cent smaller).
    """
    u = rng.uniform
    body, spine, diaphragm = _draw_body(rng)
    ribs = _draw_ribs(rng)
    organs = _draw_organs(rng, body, spine)
    hu = _draw_hu(rng)
    stomach = organs["stomach_body"]
    air_y = float(stomach.center[1] - 0.9 * stomach.semi_axes_mm[1] + u(8, 16))
    textures = {
        "liver": FourierField.draw(rng, 8, (15.0, 50.0)),
        "bowel": FourierField.draw(rng, 8, (35.0, 90.0)),
        "gas": FourierField.draw(rng, 6, (12.0, 30.0)),
        "lung": FourierField.draw(rng, 6, (10.0, 30.0)),
    }
    top_y = spine.body_y_mm - spine.body_semi_mm[1]
    liver = _draw_liver(rng)
    anatomy = Anatomy(
        body,
        diaphragm,
        spine,
        ribs,
        (),
        liver["field"],
        (0.0, 0.0, 0.0),
        organs,
        aorta=(14.0, top_y - 13.0, u(10.0, 12.5)),
        ivc=(-24.0, top_y - 8.0, 13.0, 10.0, 8.0),
        hu=hu,
        textures=textures,
        stomach_air_y_mm=air_y,
    )
    scale = 1.0
    for _ in range(3):
        scale *= (liver["volume_ml"] / _liver_volume_ml(_with_liver(anatomy, liver, scale))) ** (1 / 3)
    anatomy = _with_liver(anatomy, liver, scale)
    vessels = grow_tree(rng, _vessel_roots(anatomy, _placer(scale, liver["shift"])), anatomy.liver_sdf_at)
    return dataclasses.replace(anatomy, vessels=tuple(vessels))
