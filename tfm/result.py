"""The result of a reconstruction: fields on a grid plus what was done to get them.

Integrated quantities (all sums over grid points times the voxel volume, µm³):

* ``net_force()``: ``sum f dV`` (pN) -- about zero for a cell in equilibrium.
On 2D grids (cells on a substrate) the "force" is the traction in Pa, sums run over the
area (µm²) and give pN; a third, out-of-plane component (2.5D) is kept last.

* ``contractility()``: ``sum f . (c - x)/|c - x| dV`` (pN), the force magnitudes
  projected on the direction to the force centroid ``c`` (the ``|f|``-weighted mean
  position); positive when the cell pulls the matrix inward.
* ``dipole_moment()``: ``M_ij = sum (x - c)_i f_j dV`` (pN µm); its trace is negative
  for a contractile cell (``-F d`` for a dipole of two forces F at distance d).
* ``net_torque()``: ``sum (x - c) x f dV`` (pN µm) -- about zero in equilibrium, like the
  net force; ``equilibrium()`` gives both and their scale-free sizes.
* ``strain_energy()``: ``1/2 sum u . f dV`` (pN µm = 1e-18 J), the work the cell did.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .grid import Grid


@dataclasses.dataclass
class Result:
    """Fields of a reconstruction, all sampled on ``grid``.

    Attributes:
      grid: where the samples lie (µm).
      displacement: (*shape, d) µm, components in axis order, or None.
      force: (*shape, d) body-force density in pN/µm³ (3D), or None.
      info: parameters, choices (e.g. regularisation parameter) and timings.
    """

    grid: Grid
    displacement: np.ndarray | None = None
    force: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("displacement", "force"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value)
                # 2D grids may carry an out-of-plane component last (2.5D: y, x, z).
                comps = value.shape[-1] if (self.grid.ndim == 2 and value.ndim == 3 and value.shape[-1] == 3) else self.grid.ndim
                self.grid.check_field(value, name, components=comps)
                setattr(self, name, value)

    def measured(self) -> "Result":
        """The DVC's measured displacement on its grid of window centres, with the DVC's
        info (``valid``, ``masked``, ...), for a classical result whose force was solved on
        a finer grid (``force_grid="fine"``: its own displacement is the fitted field);
        otherwise the result itself."""
        dvc = self.info.get("dvc", {})
        if self.info.get("force_grid") != "fine" or "displacement_um" not in dvc:
            return self
        g = dvc["grid"]
        return Result(Grid(tuple(g["shape"]), tuple(g["spacing_um"]), tuple(g["origin_um"])),
                      np.asarray(dvc["displacement_um"]), info={**dvc, "method": "dvc"})

    def _need_force(self) -> np.ndarray:
        if self.force is None:
            raise ValueError("this Result holds no force field (run a force reconstruction first)")
        return self.force.astype(np.float64)

    def _weights(self, mask):
        if mask is None:
            return np.ones(self.grid.shape)
        m = np.asarray(mask)
        if m.shape != self.grid.shape:
            raise ValueError(f"mask must have the grid shape {self.grid.shape}, got {m.shape}")
        return m.astype(np.float64)

    def force_magnitude(self) -> np.ndarray:
        """|f| at every point, pN/µm³ (traction in Pa on 2D grids)."""
        return np.linalg.norm(self._need_force(), axis=-1)

    def net_force(self, mask=None) -> np.ndarray:
        """Sum of the force over the (masked) grid, pN, components as stored."""
        f = self._need_force() * self._weights(mask)[..., None]
        return f.reshape(-1, f.shape[-1]).sum(0) * self.grid.voxel_volume_um3

    def total_force(self, mask=None) -> float:
        """Sum of force magnitudes, pN."""
        return float(np.sum(self.force_magnitude() * self._weights(mask)) * self.grid.voxel_volume_um3)

    def force_centroid_um(self, mask=None) -> np.ndarray:
        """|f|-weighted mean position, µm."""
        w = self.force_magnitude() * self._weights(mask)
        if not np.sum(w) > 0:
            raise ValueError("force field is zero everywhere: no centroid")
        x = self.grid.coordinates_um()
        return np.tensordot(w, x, axes=w.ndim) / np.sum(w)

    def contractility(self, mask=None, center_um=None) -> float:
        """Force projected on the direction to ``center_um`` (default: the force
        centroid), summed, pN. Positive for a contractile cell; 0 for a zero force field."""
        if center_um is None and not np.any(self._need_force() * self._weights(mask)[..., None]):
            return 0.0
        c = self.force_centroid_um(mask) if center_um is None else np.asarray(center_um, float)
        d = c - self.grid.coordinates_um()
        n = np.linalg.norm(d, axis=-1, keepdims=True)
        e = np.divide(d, n, out=np.zeros_like(d), where=n > 0)
        proj = np.sum(self._need_force()[..., : self.grid.ndim] * e, axis=-1) * self._weights(mask)
        return float(np.sum(proj) * self.grid.voxel_volume_um3)

    def dipole_moment(self, mask=None, center_um=None) -> np.ndarray:
        """First moment of the force about ``center_um`` (default: centroid), pN µm."""
        c = self.force_centroid_um(mask) if center_um is None else np.asarray(center_um, float)
        x = self.grid.coordinates_um() - c
        d = self.grid.ndim
        f = self._need_force()[..., :d] * self._weights(mask)[..., None]
        return np.einsum("ni,nj->ij", x.reshape(-1, d), f.reshape(-1, d)) * self.grid.voxel_volume_um3

    def net_torque(self, mask=None, center_um=None) -> np.ndarray:
        """``sum (x - c) x f dV`` about ``center_um`` (default: the force centroid), pN µm (3D)."""
        if self.grid.ndim != 3:
            raise ValueError("net_torque needs a 3D result")
        c = self.force_centroid_um(mask) if center_um is None else np.asarray(center_um, float)
        x = (self.grid.coordinates_um() - c).reshape(-1, 3)
        f = (self._need_force()[..., :3] * self._weights(mask)[..., None]).reshape(-1, 3)
        # (z, y, x) is a left-handed order: the cross product taken in it flips the sign
        return -np.cross(x, f).sum(0) * self.grid.voxel_volume_um3

    def equilibrium(self) -> dict:
        """How far the force field is from equilibrium (a cell in a gel exerts no net force
        or torque on it): ``net_force_pn``, ``net_torque_pn_um`` (about the force centroid)
        and their sizes relative to the field's, ``net_force_over_total`` (|net force| / sum
        of |f| dV) and ``net_torque_over_moment`` (|net torque| / sum of |x - c| |f| dV);
        zeros for a zero force field (3D results)."""
        f = self._need_force()
        if self.grid.ndim != 3 or not np.any(f):
            return {"net_force_pn": [0.0] * 3, "net_torque_pn_um": [0.0] * 3, "net_force_over_total": 0.0,
                    "net_torque_over_moment": 0.0}
        c = self.force_centroid_um()
        net, torque, total = self.net_force(), self.net_torque(center_um=c), self.total_force()
        lever = np.linalg.norm(self.grid.coordinates_um() - c, axis=-1)
        moment = float(np.sum(lever * self.force_magnitude()) * self.grid.voxel_volume_um3)
        return {"net_force_pn": [float(v) for v in net], "net_torque_pn_um": [float(v) for v in torque],
                "net_force_over_total": float(np.linalg.norm(net) / total),
                "net_torque_over_moment": float(np.linalg.norm(torque) / moment) if moment > 0 else 0.0}

    def strain_energy(self, mask=None) -> float:
        """1/2 sum u . f dV, pN µm (1 pN µm = 1e-18 J)."""
        if self.displacement is None:
            raise ValueError("this Result holds no displacement field")
        w = self._weights(mask)
        return float(0.5 * np.sum(np.sum(self.displacement * self._need_force(), axis=-1) * w) * self.grid.voxel_volume_um3)

    def strain(self) -> np.ndarray:
        """Small-strain tensor ``(eps_ij)`` of the displacement, ``(*shape, d, d)``
        (second-order finite differences on the result's grid, :func:`tfm.fields.strain`)."""
        if self.displacement is None:
            raise ValueError("this Result holds no displacement field")
        from .fields import strain

        if min(self.grid.shape) < 4:
            raise ValueError(f"strain needs at least 4 points along each axis, the grid has {self.grid.shape}")
        return np.asarray(strain(np.asarray(self.displacement, np.float64)[..., : self.grid.ndim], self.grid))

    def strain_invariants(self) -> dict:
        """Per point: ``volumetric`` (trace), ``principal`` (eigenvalues, ascending, last
        axis), ``max_shear`` (half the principal spread) and ``von_mises`` (equivalent
        strain ``sqrt(2/3 e':e')`` of the deviator ``e'``); dimensionless."""
        e = self.strain()
        d = e.shape[-1]
        tr = np.trace(e, axis1=-2, axis2=-1)
        dev = e - tr[..., None, None] / d * np.eye(d)
        principal = np.linalg.eigvalsh(e)
        return {"volumetric": tr, "principal": principal, "max_shear": 0.5 * (principal[..., -1] - principal[..., 0]),
                "von_mises": np.sqrt(2.0 / 3.0 * np.sum(dev * dev, axis=(-2, -1)))}

    def summary(self) -> dict:
        """The headline numbers as a JSON-ready dict."""
        out = {"grid_shape": list(self.grid.shape), "spacing_um": list(self.grid.spacing_um)}
        if self.displacement is not None:
            mag = np.linalg.norm(self.displacement, axis=-1)
            out.update(max_displacement_um=float(mag.max()), rms_displacement_um=float(np.sqrt(np.mean(mag**2))))
        if self.force is not None:
            out.update(
                net_force_pn=[float(v) for v in self.net_force()],
                **({k: v for k, v in self.equilibrium().items() if k != "net_force_pn"} if self.grid.ndim == 3 else {}),
                total_force_pn=self.total_force(),
                contractility_pn=self.contractility() if np.any(self.force) else 0.0,
            )
            if self.displacement is not None:
                out["strain_energy_pn_um"] = self.strain_energy()
        for key in ("method", "alpha", "regularization_rule", "alpha_rule", "noise_um", "noise_estimated", "misfit_um",
                    "cutoff_wavelength_um", "drift_model", "confident_fraction", "time_total_s"):
            if key in self.info:
                out[key] = self.info[key]
        return out
