"""The linear structure of a decorrelated model: involved sites, their order and maps.

Write ``z`` for the involved sites' values in rotated, unconstrained coordinates, flattened in
the order the model samples them, and ``u`` for the auxiliary values. The family of
:mod:`reparam.family` is linear in both: ``z = F(theta) u`` with ``F`` unit lower triangular.
:class:`LinearPlan` evaluates ``F``, its inverse and the per-child local map on flat vectors,
which is what the Gaussian analysis (:mod:`reparam.local.analysis`,
:mod:`reparam.local.ceiling`) needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from numpyro import handlers

from reparam.family import ChildFamily, Structure
from reparam.handler import DecorrelateMessenger
from reparam.sites import SiteLayout, site_layout


@dataclass(frozen=True)
class LinearPlan:
    """The involved sites of a decorrelated model and its linear map ``z -> u``.

    Attributes:
        sites: involved sites (children and parents) in the order the model samples them.
        families: child name -> its :class:`ChildFamily`.
        structure: the rotations and sequence axis shared by all sites.
    """

    sites: tuple[SiteLayout, ...]
    families: Mapping[str, ChildFamily]
    structure: Structure

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.size for s in self.sites)

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    def split(self, flat: Array) -> dict[str, Array]:
        """Flat vector (trace order, row-major per site) -> site name -> array."""
        out, start = {}, 0
        for site in self.sites:
            out[site.name] = flat[start : start + site.size].reshape(site.shape)
            start += site.size
        return out

    def join(self, values: Mapping[str, Array]) -> Array:
        return jnp.concatenate([jnp.ravel(values[s.name]) for s in self.sites])

    def rotate(self, x_flat: Array, inverse: bool = False) -> Array:
        """Model (unconstrained) coordinates -> rotated coordinates ``z`` (or back)."""
        values = self.split(x_flat)
        return self.join(
            {s.name: self.structure.rotate_value(values[s.name], s, inverse) for s in self.sites}
        )

    def child_params(self, name: str, coefficients: Mapping[str, Array]) -> dict[str, Array]:
        """The linear coefficients of child ``name`` keyed as in its family."""
        family = self.families[name]
        return {key: coefficients[f"{name}_{key}"] for key in family.param_shapes()}

    def local_map(self, v_flat: Array, coefficients: Mapping[str, Array]) -> Array:
        """``G(theta) v``: each child's ``(I + W_c) v_c - S_c(v_parents)`` (Markov form: the
        inverse rows ``M_c v_c + S_c(v_parents)``), others unchanged.

        ``G - I`` is linear in the coefficients and each coefficient sets a disjoint set of its
        entries; the exact target is ``N_cc^{-1} [-N_c,<c, I]`` row block by row block (Markov
        form: ``N``'s rows ``[N_c,<c, N_cc]``; :func:`reparam.local.analysis.exact_local_target`).
        """
        v = self.split(v_flat)
        out = dict(v)
        for name, family in self.families.items():
            parents = {c.parent.name: v[c.parent.name] for c in family.couplings}
            params = self.child_params(name, coefficients)
            if self.structure.markov:
                out[name] = family.to_aux(v[name], parents, params)
            else:
                out[name] = family.from_aux(v[name], parents, params)
        return self.join(out)

    def sample_map(self, u_flat: Array, coefficients: Mapping[str, Array]) -> Array:
        """``z = F(theta) u``: the model's sampling direction, site by site in order."""
        u = self.split(u_flat)
        z = {}
        for site in self.sites:
            family = self.families.get(site.name)
            if family is None:
                z[site.name] = u[site.name]
                continue
            parents = {c.parent.name: z[c.parent.name] for c in family.couplings}
            params = self.child_params(site.name, coefficients)
            z[site.name] = family.from_aux(u[site.name], parents, params)
        return self.join(z)

    def to_aux(self, z_flat: Array, coefficients: Mapping[str, Array]) -> Array:
        """``u = F(theta)^{-1} z``."""
        z = self.split(z_flat)
        u = dict(z)
        for name, family in self.families.items():
            parents = {c.parent.name: z[c.parent.name] for c in family.couplings}
            u[name] = family.to_aux(z[name], parents, self.child_params(name, coefficients))
        return self.join(u)

    def sampling_matrix(self, coefficients: Mapping[str, Array]) -> Array:
        """Dense ``F(theta)`` (``dim x dim``, unit lower triangular)."""
        zero = jnp.zeros(self.dim)
        return jax.jacfwd(lambda u: self.sample_map(u, coefficients))(zero)

    def _rotate_parents_only(self, flat: Array, inverse: bool) -> Array:
        values = self.split(flat)
        for site in self.sites:
            if site.name not in self.families:
                values[site.name] = self.structure.rotate_value(values[site.name], site, inverse)
        return self.join(values)

    def guide_to_z(self, g_flat: Array, coefficients: Mapping[str, Array]) -> Array:
        """Guide coordinates (``u`` for children, model coordinates for parent-only sites)
        -> ``z``."""
        return self.sample_map(self._rotate_parents_only(g_flat, False), coefficients)

    def z_to_guide(self, z_flat: Array, coefficients: Mapping[str, Array]) -> Array:
        """Inverse of :meth:`guide_to_z`."""
        return self._rotate_parents_only(self.to_aux(z_flat, coefficients), True)

    def zero_coefficients(self, dtype: Any = jnp.float64) -> dict[str, Array]:
        return {
            f"{name}_{key}": jnp.zeros(shape, dtype)
            for name, family in self.families.items()
            for key, shape in family.param_shapes().items()
        }

    def rotate_matrix(self, matrix: Array) -> Array:
        """``R M R^T`` for a matrix over model coordinates (e.g. a precision)."""
        rows = jax.vmap(self.rotate)(jnp.asarray(matrix))  # M R^T (rows rotated)
        return jax.vmap(self.rotate)(rows.T).T


def _trace_plain(model: DecorrelateMessenger, point: Mapping[str, Any], args, kwargs):
    seeded = handlers.seed(handlers.substitute(model.fn, data=dict(point)), rng_seed=0)
    return handlers.trace(seeded).get_trace(*args, **kwargs)


def linear_plan(
    model: DecorrelateMessenger, point: Mapping[str, Any], *args: Any, **kwargs: Any
) -> LinearPlan:
    """Extracts the involved sites and families of ``model`` by running the plain model once.

    Args:
        model: a model returned by :func:`reparam.decorrelate`.
        point: values (model coordinates) of the latent sites; missing ones are drawn.

    Raises:
        ValueError: if the config names unknown sites or a parent is sampled after its child.
    """
    model.resolve(*args, **kwargs)
    trace = _trace_plain(model, point, args, kwargs)
    latent = [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]
    model.check_config(latent)
    layouts = {name: site_layout(trace[name], model.dims) for name in latent}
    families, involved = {}, set()
    for position, name in enumerate(latent):
        affine = model.affine_for(name)
        if affine is None:
            continue
        for parent in affine.parents:
            if parent not in layouts or latent.index(parent) > position:
                raise ValueError(
                    f"Parent {parent!r} of {name!r} is not a latent site sampled before "
                    f"{name!r}; latent sites in order: {latent}."
                )
        families[name] = model.family(
            layouts[name], [layouts[p] for p in affine.parents], affine, trace[name]["fn"]
        )
        involved |= {name, *affine.parents}
    unknown = [n for n in model.involve if n not in layouts]
    if unknown:
        raise ValueError(f"involve names sites {unknown} that the model does not sample.")
    involved |= set(model.involve)
    sites = tuple(layouts[n] for n in latent if n in involved)
    return LinearPlan(sites=sites, families=families, structure=model.structure)
