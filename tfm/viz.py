"""Figures and 3D views of results: PyVista scenes (offscreen PNG or an interactive window)
and matplotlib slices. Imported lazily; the numerical core never imports it.

Axis conventions: arrays are (Z, Y, X) with vectors (v_z, v_y, v_x); PyVista runs x
fastest and wants (x, y, z) vectors, which :func:`tfm.io.to_pyvista` converts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .segment import centroid_um
from .atomic import atomic_path
from .grid import Grid
from .io import to_pyvista
from .result import Result


def _pv(offscreen: bool):
    if offscreen:  # EGL renders without an X server (Mesa); silences "bad X server connection"
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv

    if offscreen:
        pv.OFF_SCREEN = True
    return pv


def _image(grid, volume, name):
    import pyvista as pv

    img = pv.ImageData(dimensions=grid.shape[::-1], spacing=grid.spacing_um[::-1], origin=grid.origin_um[::-1])
    img.point_data[name] = np.ascontiguousarray(np.asarray(volume, np.float32).ravel())
    return img


def _top_points(img, name: str, count: int):
    """The ``count`` points of largest ``|name|`` (arrows for the strongest vectors only)."""
    mag = np.linalg.norm(np.asarray(img.point_data[name]), axis=1)
    if mag.max() <= 0:
        return None
    keep = np.argsort(mag)[::-1][: min(count, int(np.sum(mag > 0)))]
    import pyvista as pv

    pts = pv.PolyData(np.asarray(img.points)[keep])
    pts.point_data[name] = np.asarray(img.point_data[name])[keep]
    pts.point_data["magnitude"] = mag[keep]
    return pts


def _volume_image(vol, result: Result, name: str):
    """A scalar volume as a PyVista image: on the result's grid, or ``(volume, grid)`` with
    the image's Grid (or voxel size; first voxel at 0 µm)."""
    if isinstance(vol, tuple):
        v, grid = vol
        return _image(Grid.of(np.shape(v), grid), v, name)
    if np.shape(vol) != result.grid.shape:
        raise ValueError(f"{name} volume {np.shape(vol)} is not on the result's grid {result.grid.shape}; "
                         f"pass ({name}_volume, spacing_um) for an image volume")
    return _image(result.grid, vol, name)


BEAD_CMAP, BEAD_OPACITY = "gray", 0.7


def _slab(k: int, slab_um: float, step_um: float) -> slice:
    """The z-planes of a slab ``slab_um`` thick centred on plane ``k`` (planes ``step_um`` apart)."""
    half = max(0, int(round(0.5 * slab_um / step_um)))
    return slice(max(0, k - half), k + half + 1)


def _bead_plane(beads, result: Result, z_um: float | None = None, slab_um: float = 6.0):
    """A flat image of the beads at height ``z_um`` (default: the middle): the maximum over
    a slab ``slab_um`` thick, so that beads near the plane show as dots, and the grey
    levels to draw it with (1st to 99.7th percentile)."""
    img = _volume_image(beads, result, "beads")
    v = np.asarray(img.point_data["beads"]).reshape(tuple(img.dimensions)[::-1])
    hz = float(img.spacing[2])
    z0 = float(img.origin[2])
    k = v.shape[0] // 2 if z_um is None else int(np.clip(round((z_um - z0) / hz), 0, v.shape[0] - 1))
    slab = v[_slab(k, slab_um, hz)].max(axis=0)
    import pyvista as pv

    plane = pv.ImageData(dimensions=(v.shape[2], v.shape[1], 1), spacing=(img.spacing[0], img.spacing[1], 1.0),
                         origin=(img.origin[0], img.origin[1], z0 + k * hz))
    plane.point_data["beads"] = np.ascontiguousarray(slab.ravel())
    lo, hi = np.percentile(slab, [1.0, 99.7])
    return plane, (float(lo), float(max(hi, lo + 1e-6)))


def scene(result: Result, cell=None, beads=None, cell_level: float | None = None, arrows: int = 400,
          glyphs: int = 600, offscreen: bool = True, window_size=(900, 700)):
    """A PyVista plotter showing ``result`` in 3D.

    Args:
      cell: optional cell volume (e.g. the cell channel or a mask / volume fraction): on the
        result's grid, or an image volume ``(volume, spacing_um)`` whose first voxel lies at
        0 µm (the image the result was measured on; DVC result grids start at the first
        window centre, not at 0): drawn as an isosurface at ``cell_level`` (default: half
        its maximum).
      beads: optional bead image ``(volume, spacing_um)`` (first voxel at 0 µm) or a volume
        on the result's grid: a plane through the cell (or the middle), the maximum over a
        6 µm slab, is drawn translucent under the field.
      arrows: number of force arrows (the strongest), coloured by |f| (pN/µm³).
      glyphs: number of displacement glyphs (the largest), grey.
    """
    pv = _pv(offscreen)
    img = to_pyvista(result)
    pl = pv.Plotter(off_screen=offscreen, window_size=list(window_size))
    pl.set_background("white")
    pl.add_mesh(img.outline(), color="black")
    extent = np.asarray(result.grid.extent_um)
    scale_len = 0.08 * float(extent.max())
    focus = []
    if cell is not None:
        vol = cell[0] if isinstance(cell, tuple) else cell
        cimg = _volume_image(cell, result, "cell")
        level = 0.5 * float(np.max(vol)) if cell_level is None else cell_level
        surf = cimg.contour([level], scalars="cell")
        if surf.n_points:
            pl.add_mesh(surf, color="#4caf50", opacity=0.55, smooth_shading=True)
            focus.append(surf)
    if beads is not None:
        zs = np.nonzero(np.asarray(vol) > level)[0] if cell is not None else ()
        z_um = float(np.mean(zs)) * float(cimg.spacing[2]) + float(cimg.origin[2]) if len(zs) else None  # through the cell
        plane, clim = _bead_plane(beads, result, z_um)
        pl.add_mesh(plane, cmap=BEAD_CMAP, clim=clim, opacity=BEAD_OPACITY, show_scalar_bar=False)
    if result.displacement is not None and glyphs:
        pts = _top_points(img, "displacement_um", glyphs)
        if pts is not None:
            factor = scale_len / float(pts.point_data["magnitude"].max())
            pl.add_mesh(pts.glyph(orient="displacement_um", scale="magnitude", factor=factor), color="#777777", opacity=0.6)
    if result.force is not None and arrows:
        pts = _top_points(img, "force_pN_per_um3", arrows)
        if pts is not None:
            factor = 1.5 * scale_len / float(pts.point_data["magnitude"].max())
            focus.append(pts)
            pl.add_mesh(pts.glyph(orient="force_pN_per_um3", scale="magnitude", factor=factor), scalars="magnitude",
                        cmap="inferno", scalar_bar_args={"title": "force density, pN/µm³", "color": "black"})
    pl.add_axes(color="black")
    pl.camera_position = "iso"
    if focus:  # frame the cell and the strongest forces, not the whole box
        b = np.array([m.bounds for m in focus]).reshape(-1, 3, 2)
        lo, hi = b[:, :, 0].min(0), b[:, :, 1].max(0)
        c, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * 1.6, 0.1 * extent.max())
        pl.reset_camera(bounds=np.ravel(np.stack([c - half, c + half], -1)).tolist())
    return pl


def render_png(result: Result, path, **kwargs) -> Path:
    """Render :func:`scene` offscreen into a PNG (written atomically)."""
    path = Path(path)
    pl = scene(result, offscreen=True, **kwargs)
    with atomic_path(path) as tmp:  # keeps the suffix, so VTK writes PNG
        pl.screenshot(str(tmp))
    pl.close()
    return path


def show(result: Result, **kwargs) -> None:
    """Open an interactive window (needs a display)."""
    pl = scene(result, offscreen=False, **kwargs)
    pl.show()


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (figures are written, not shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (format from the suffix of ``path``) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary file keeps the suffix, so the format follows it
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    return path


def slices_figure(result: Result, path, z_index: int | None = None) -> Path:
    """|u| and |f| on one z-plane (default: the middle), side by side, as a PNG."""
    plt = pyplot()
    g = result.grid
    z = g.shape[0] // 2 if z_index is None else int(z_index)
    fields = [(n, a, u) for n, a, u in (("|u|", result.displacement, "µm"), ("|f|", result.force, "pN/µm³")) if a is not None]
    fig, ax = plt.subplots(1, len(fields), figsize=(5 * len(fields), 4.2), squeeze=False)
    ext = [g.origin_um[2], g.origin_um[2] + (g.shape[2] - 1) * g.spacing_um[2],
           g.origin_um[1] + (g.shape[1] - 1) * g.spacing_um[1], g.origin_um[1]]
    for a, (name, arr, unit) in zip(ax[0], fields):
        im = a.imshow(np.linalg.norm(arr[z], axis=-1), extent=ext)
        a.set_title(f"{name}, {unit} (z = {g.origin_um[0] + z * g.spacing_um[0]:.1f} µm)")
        a.set_xlabel("x, µm")
        a.set_ylabel("y, µm")
        fig.colorbar(im, ax=a, shrink=0.85)
    fig.tight_layout()
    return save_figure(fig, path)


def bead_pair_figure(reference, deformed, spacing_um, result: Result, path, mask=None, z_um: float | None = None,
                     slab_um: float | None = None, max_arrows: int = 24, title: str | None = None) -> Path:
    """The 2D overview of a reconstruction from a bead volume pair, as a PNG:
    maximum-intensity projections (over z) of both bead volumes with the in-plane
    displacement arrows of one z-plane of the result, and |u| and |f| on that plane.

    Args:
      reference, deformed: the bead volumes (Z, Y, X), first voxel at 0 µm.
      spacing_um: their voxel size.
      result: the reconstruction (its grid in µm from the images' first voxel).
      mask: optional cell mask on the image's voxels: outlined, and the plane defaults to
        its centroid.
      z_um: the plane (default: the cell's centroid, else the middle of the volume).
      slab_um: project only a slab this thick around the plane (default: the whole stack;
        use a slab where beads are so dense that the full projection saturates).
      max_arrows: at most this many arrows along each axis (the grid is subsampled).
    """
    ref, dfm = np.asarray(reference), np.asarray(deformed)
    if ref.ndim != 3 or ref.shape != dfm.shape:
        raise ValueError(f"reference and deformed must be 3D volumes of one shape, got {ref.shape} and {dfm.shape}")
    if result.displacement is None:
        raise ValueError("result holds no displacement field")
    image = Grid.of(ref.shape, spacing_um)
    sp = np.asarray(image.spacing_um)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != ref.shape:
            raise ValueError(f"mask {mask.shape} is not on the bead volumes' voxels {ref.shape}")
    if z_um is None:
        c = centroid_um(mask, sp)
        z_um = float(c[0]) if c is not None else 0.5 * (ref.shape[0] - 1) * sp[0]
    g = result.grid
    zax, yax, xax = g.axes_um()
    k = int(np.argmin(np.abs(zax - z_um)))
    u = np.asarray(result.displacement[k])
    step = tuple(max(1, int(np.ceil(n / max_arrows))) for n in g.shape[1:])
    yy, xx = np.meshgrid(yax[::step[0]], xax[::step[1]], indexing="ij")
    uu = u[::step[0], ::step[1]]
    inplane = np.linalg.norm(uu[..., 1:], axis=-1)
    ref_len = float(np.percentile(inplane, 95)) if np.any(inplane > 0) else 1.0
    # The 95th-percentile arrow is drawn one arrow spacing long.
    spacing_arrows = float(min(step[0] * g.spacing_um[1], step[1] * g.spacing_um[2]))
    scale = max(ref_len, 1e-12) / spacing_arrows  # data units per µm of drawn arrow
    img_ext = (-0.5 * sp[2], (ref.shape[2] - 0.5) * sp[2], -0.5 * sp[1], (ref.shape[1] - 0.5) * sp[1])
    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(11, 10), constrained_layout=True)
    if slab_um is None:
        zsl, what = slice(None), "max-intensity projection"
    else:
        zsl, what = _slab(int(round(z_um / sp[0])), slab_um, sp[0]), f"max-intensity projection of {slab_um:g} µm"
    for a, vol, name in ((ax[0, 0], ref, "reference"), (ax[0, 1], dfm, "deformed")):
        mip = vol[zsl].max(axis=0)
        a.imshow(mip, cmap="gray", origin="lower", extent=img_ext, vmax=np.percentile(mip, 99.5))
        a.quiver(xx, yy, uu[..., 2], uu[..., 1], color="cyan", angles="xy", scale_units="xy", scale=scale, width=0.003)
        a.set_title(f"{name} beads, {what};\nu at z = {zax[k]:.1f} µm (arrow of one spacing = {ref_len:.2g} µm)")
    fields = [("|u|, µm", np.linalg.norm(u, axis=-1), "viridis")]
    if result.force is not None:
        fields.append(("|f|, pN/µm³", np.linalg.norm(np.asarray(result.force[k]), axis=-1), "magma"))
    grid_ext = (xax[0], xax[-1], yax[0], yax[-1])
    for a, (name, img, cmap) in zip(ax[1], fields):
        im = a.imshow(img, origin="lower", extent=grid_ext, cmap=cmap)
        a.set_title(f"{name} at z = {zax[k]:.1f} µm")
        fig.colorbar(im, ax=a, shrink=0.85)
    if len(fields) == 1:
        ax[1, 1].axis("off")
    for a in ax.ravel():
        if mask is not None and a.has_data():
            a.contour(mask.any(axis=0), levels=[0.5], colors="yellow", origin="lower", extent=img_ext, linewidths=1)
        a.set_xlim(img_ext[0], img_ext[1])
        a.set_ylim(img_ext[2], img_ext[3])
        a.set_xlabel("x (µm)")
        a.set_ylabel("y (µm)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def force_planes_figure(results: dict, path, mask=None, spacing_um=None, title: str | None = None) -> Path:
    """|f| of several reconstructions of one field, side by side on one colour scale: the
    z-plane and the y-plane through the cell's centroid (or the grid's middle), the cell
    outlined. ``results`` maps a label to a :class:`Result` (each on its own grid); ``mask``
    is on the voxels of ``spacing_um`` (the bead volumes), first voxel at 0 µm."""
    if not results:
        raise ValueError("results is empty")
    zax, yax, xax = next(iter(results.values())).grid.axes_um()
    centre = np.array([0.5 * (a[0] + a[-1]) for a in (zax, yax, xax)])
    if mask is not None:
        sp = np.asarray(Grid.of(np.shape(mask), spacing_um).spacing_um)
        mask = np.asarray(mask, bool)
        c = centroid_um(mask, sp)
        centre = centre if c is None else c
    mags = {k: np.linalg.norm(np.asarray(r.force), axis=-1) for k, r in results.items()}
    vmax = max(float(np.percentile(m, 99.9)) for m in mags.values()) or 1.0
    plt = pyplot()
    fig, ax = plt.subplots(2, len(results), figsize=(4.6 * len(results), 7.5), squeeze=False, constrained_layout=True)
    for j, (label, m) in enumerate(mags.items()):
        zax, yax, xax = results[label].grid.axes_um()
        kz, ky = int(np.argmin(np.abs(zax - centre[0]))), int(np.argmin(np.abs(yax - centre[1])))
        for i, (img, ext, name, ylab) in enumerate(((m[kz], (xax[0], xax[-1], yax[0], yax[-1]), f"z = {zax[kz]:.1f} µm", "y (µm)"),
                                                    (m[:, ky], (xax[0], xax[-1], zax[0], zax[-1]), f"y = {yax[ky]:.1f} µm", "z (µm)"))):
            im = ax[i, j].imshow(img, origin="lower", extent=ext, cmap="magma", vmin=0, vmax=vmax, aspect="auto")
            if mask is not None:
                outline = mask.any(axis=0) if i == 0 else mask.any(axis=1)
                h = sp[1] if i == 0 else sp[0]
                ax[i, j].contour(outline, levels=[0.5], colors="cyan", origin="lower", linewidths=1,
                                 extent=(0, (outline.shape[1] - 1) * sp[2], 0, (outline.shape[0] - 1) * h))
            ax[i, j].set_title(f"{label}: |f| at {name}")
            ax[i, j].set_xlabel("x (µm)")
            ax[i, j].set_ylabel(ylab)
    fig.colorbar(im, ax=ax, shrink=0.6, label="|f|, pN/µm³")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def decay_figure(decay: dict, path, title: str = "displacement decay") -> Path:
    """|u| against distance from the cell surface, from :func:`tfm.segment.displacement_decay`:
    every trusted grid point, and the median per distance bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    v = decay["valid"]
    ax.scatter(decay["distance_um"][v], decay["magnitude_um"][v], s=4, alpha=0.3, color="0.5", label="grid points")
    rows = decay["bins"]
    ax.plot([0.5 * sum(r["distance_um"]) for r in rows], [r["median_u_um"] for r in rows], "o-", color="C3",
            label="median per distance bin")
    ax.set_xlabel("distance from the cell surface (µm)")
    ax.set_ylabel("|u| (µm)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path, dpi=120)


def series_figure(table, path, title: str = "time series", truth=None) -> Path:
    """A time series' table (:func:`tfm.series.reconstruct_series`) against time: the
    contractility (with ``truth``, a sequence per frame, where known), the strain energy,
    max |u| and the net force relative to the total, one panel each."""
    plt = pyplot()
    timed = all(row.get("time_s") is not None for row in table)
    t = [row["time_s"] if timed else row["frame"] for row in table]
    panels = (("contractility_pn", "contractility (nN)", 1e-3), ("strain_energy_pn_um", "strain energy (fJ)", 1e-3),
              ("max_displacement_um", "max |u| (µm)", 1.0), ("net_force_over_total", "|net force| / sum |f|", 1.0))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), constrained_layout=True)
    for ax, (key, label, scale) in zip(axes, panels):
        ax.plot(t, [np.nan if row[key] is None else row[key] * scale for row in table], "o-", color="C0", label="tfm")
        if key == "contractility_pn" and truth is not None:
            ax.plot(t, np.asarray(truth, float) * scale, "s--", color="C3", label="truth")
            ax.legend()
        ax.set_xlabel("time (s)" if timed else "frame")
        if not timed and len(table) <= 8 and all(row.get("label") for row in table):
            ax.set_xticks(t, [row["label"] for row in table], rotation=20)
        ax.set_ylabel(label)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def roc_figure(y_true, proba, path, class_names=None, title: str = "ROC") -> Path:
    """ROC curve(s) of class probabilities ``proba`` (N, K) against ``y_true`` to an image
    file (one curve per class for K > 2; :mod:`tfm.stiffness.metrics`)."""
    from .stiffness.metrics import auc, roc_curve

    plt = pyplot()
    y = np.asarray(y_true, int)
    p = np.asarray(proba, float)
    k = p.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(4, 4))
    for c in ([1] if k == 2 else range(k)):
        if 0 < np.sum(y == c) < len(y):
            fpr, tpr, _ = roc_curve(y == c, p[:, c])
            ax.plot(fpr, tpr, label=f"{names[c]} (AUC {auc(y == c, p[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def saliency_figure(image: np.ndarray, maps: dict, path, title: str = "") -> Path:
    """An image and each saliency map (name -> (H, W) in [0, 1], e.g. Grad-CAM and
    SmoothGrad of :mod:`tfm.stiffness.explain`) laid over it, side by side, to ``path``."""
    plt = pyplot()
    img = np.asarray(image, float).squeeze()
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.4))
    axes[0].imshow(img, cmap="gray")
    axes[0].set_title(title or "input", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(img, cmap="gray")
        ax.imshow(m, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
