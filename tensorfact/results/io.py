"""Saving and loading fits: one netCDF file (xarray + h5netcdf) per fit.

Layout (netCDF4 groups):

* root attributes: format tag and version, method, seed, the specification, decorrelation
  switches, ``info``, NUTS diagnostics and the fit's record (JSON);
* ``posterior``: the draws (``chain, draw, <dims>``), as in :attr:`Fit.posterior`;
* ``observed_data``: the validated data (NaN = missing) with its coordinates;
* ``losses``: the SVI loss trace (``step``);
* ``coefficients``: the decorrelation coefficients;
* ``guide_params``: the trained guide's parameters (constrained), for inspection;
* ``svi_state``: the leaves of the final ``SVIState`` (unconstrained parameters, optimiser
  moments and step count, random key), so a loaded SVI fit resumes exactly where it stopped.

Optax transformations cannot be serialised: a fit trained with the default optimizer is
rebuilt from its record (:class:`~tensorfact.results.record.FitRecord`); for one trained with
``optimizer=``, pass the same transformation to :meth:`Fit.resume`. Rebuilding the guide is the
method's business (:mod:`tensorfact.methods.svi`); this module only reads and writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from tensorfact.data import TensorData
from tensorfact.effects import GrandMean, Noise, Shrinkage, Temporal
from tensorfact.results.record import FitRecord
from tensorfact.spec import ModelSpec

if TYPE_CHECKING:  # the fit imports this module (Fit.save)
    from tensorfact.results.fit import Fit

FORMAT = "tensorfact-fit"
VERSION = 2  # 2: the typed record replaced the settings; a JAX-keyed fit's seed is null
ENGINE = "h5netcdf"
OBSERVED = "observed_values"  # the data's variable in the observed_data group
_EFFECTS = {"GrandMean": GrandMean, "Shrinkage": Shrinkage, "Temporal": Temporal}


# -- specification <-> JSON ------------------------------------------------------------------
def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    """A JSON-able description of a specification (inverse: :func:`spec_from_dict`).

    A temporal effect's ``transition`` (a user-written callable) cannot be serialised: only
    its name is stored, and it must be passed again when loading.
    """
    effects = []
    for effect in spec.effects:
        entry: dict[str, Any] = {"type": type(effect).__name__}
        for item in dataclasses.fields(effect):
            value = getattr(effect, item.name)
            if item.name == "transition" and value is not None:
                value = {"name": getattr(value, "__qualname__", type(value).__name__)}
            entry[item.name] = _plain(value)
        effects.append(entry)
    noise = {k: _plain(v) for k, v in dataclasses.asdict(spec.noise).items()}
    return {"dims": list(spec.dims), "time": spec.time, "effects": effects, "noise": noise}


def _plain(value: Any) -> Any:
    """Tuples as lists, NumPy scalars (e.g. a ``np.float32`` prior scale) as Python ones."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def spec_from_dict(
    data: Mapping[str, Any], transitions: Mapping[str, Any] | None = None
) -> ModelSpec:
    """Rebuilds (and so re-validates) a specification from :func:`spec_to_dict` output.

    Args:
        data: the description.
        transitions: effect name -> transition, for temporal effects saved with one. A
            missing one is replaced by a placeholder: the posterior can be read, but the model
            cannot run (resuming raises an error asking for it).

    Raises:
        ValueError: for an unknown effect type.
    """
    transitions = dict(transitions or {})
    effects = []
    for entry in data["effects"]:
        fields = dict(entry)
        kind = fields.pop("type")
        if kind not in _EFFECTS:
            raise ValueError(f"Unknown effect type {kind!r} in a saved specification.")
        if "dims" in fields:
            fields["dims"] = tuple(fields["dims"])
        if fields.get("transition") is not None:
            saved = fields["transition"]["name"]
            fields["transition"] = transitions.get(
                fields["name"], MissingTransition(fields["name"], saved)
            )
        effects.append(_EFFECTS[kind](**fields))
    return ModelSpec(dims=tuple(data["dims"]), time=data["time"], effects=tuple(effects),
                     noise=Noise(**data["noise"]))


@dataclasses.dataclass(frozen=True)
class MissingTransition:
    """Stands in for a temporal effect's transition not passed to :func:`tensorfact.load`."""

    effect: str
    saved: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            f"The temporal effect {self.effect!r} was fitted with the transition "
            f"{self.saved!r}, which cannot be saved; load the fit with "
            f"tensorfact.load(path, transitions={{{self.effect!r}: ...}}) to run the model."
        )


# -- save -------------------------------------------------------------------------------------
def save(fit: Fit, path: str | os.PathLike) -> None:
    """Writes ``fit`` to ``path`` (netCDF4 via h5netcdf; replaced atomically if it exists).

    Args:
        fit: a fit from :func:`tensorfact.fit`, :meth:`Fit.resume` or :func:`tensorfact.load`.
        path: the file to write (conventionally ``*.nc``).

    Raises:
        TypeError: if ``fit`` is not a :class:`~tensorfact.Fit`.
    """
    if not all(hasattr(fit, a) for a in ("method", "spec", "data", "posterior", "_record")):
        raise TypeError(f"save expects a tensorfact Fit, got {type(fit).__name__}.")
    path = Path(path)
    observed = fit.data.to_dataarray(name=OBSERVED)
    observed.attrs = {}  # the data's attrs go to the root as JSON (netCDF attrs are limited)
    groups: dict[str, xr.Dataset] = {
        "posterior": fit.posterior,
        "observed_data": xr.Dataset({OBSERVED: observed}),
    }
    if fit.losses is not None:
        groups["losses"] = xr.Dataset({"loss": ("step", np.asarray(fit.losses))})
    groups["coefficients"] = _arrays_dataset(fit.coefficients)
    groups["guide_params"] = _arrays_dataset(fit.guide_params)
    leaves = _state_leaves(fit)
    if leaves is not None:
        groups["svi_state"] = _arrays_dataset(
            {f"leaf_{k:04d}": leaf for k, leaf in enumerate(leaves)}
        )
    attrs = {
        "format": FORMAT,
        "version": VERSION,
        "method": fit.method,
        "seed": json.dumps(fit.seed),
        "groups": json.dumps(list(groups)),
        "spec": json.dumps(spec_to_dict(fit.spec)),
        "decorrelate": json.dumps(fit.decorrelate),
        "info": json.dumps(fit.info, default=_json_default),
        "record": json.dumps(None if fit._record is None else fit._record.to_dict()),
        "diagnostics": json.dumps(_diagnostics_to_dict(fit.diagnostics), default=_json_default),
        "data_name": fit.data.name,
        "data_attrs": json.dumps(_jsonable_attrs(fit.data.attrs)),
        "svi_stopped": str(fit.info.get("svi_stopped", "max_steps")),
    }
    handle, temporary = tempfile.mkstemp(suffix=".nc", dir=path.parent or ".")
    os.close(handle)
    try:
        xr.Dataset(attrs=attrs).to_netcdf(temporary, mode="w", engine=ENGINE)
        for name, dataset in groups.items():
            dataset.to_netcdf(temporary, mode="a", group=name, engine=ENGINE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _state_leaves(fit: Fit) -> list[np.ndarray] | None:
    if fit._svi is not None:
        import jax

        return [np.asarray(leaf) for leaf in jax.tree.leaves(fit._svi.run.state)]
    if fit._saved and fit._saved.get("leaves"):
        return list(fit._saved["leaves"])
    return None


def _arrays_dataset(arrays: Mapping[str, Any]) -> xr.Dataset:
    variables = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        attrs = {}
        if value.dtype == bool:
            value, attrs = value.astype(np.int8), {"tensorfact_dtype": "bool"}
        dims = tuple(f"{name}_dim{k}" for k in range(value.ndim))
        variables[name] = xr.Variable(dims, value, attrs)
    return xr.Dataset(variables)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _numpy_json(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _jsonable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The data's attrs that JSON can hold (NumPy values as lists); warns about the rest."""
    kept, dropped = {}, []
    for key, value in attrs.items():
        try:
            kept[str(key)] = json.loads(json.dumps(value, default=_numpy_json))
        except (TypeError, ValueError):
            dropped.append(key)
    if dropped:
        warnings.warn(f"Data attributes {dropped} cannot be saved and were left out.",
                      UserWarning, stacklevel=3)
    return kept


def _diagnostics_to_dict(diagnostics: Any) -> dict[str, Any] | None:
    if diagnostics is None or not dataclasses.is_dataclass(diagnostics):
        return None
    return {"type": type(diagnostics).__name__, **dataclasses.asdict(diagnostics)}


def _diagnostics_from_dict(
    data: Mapping[str, Any] | None, types: Mapping[str, type]
) -> Any:
    if not data:
        return None
    fields = dict(data)
    kind = fields.pop("type", None)
    return types[kind](**fields) if kind in types else fields


# -- load -------------------------------------------------------------------------------------
def read_fields(
    path: str | os.PathLike,
    transitions: Mapping[str, Any] | None = None,
    diagnostics_types: Mapping[str, type] | None = None,
) -> dict[str, Any]:
    """Reads a file written by :func:`save`: the fields of the :class:`Fit` it holds
    (:func:`tensorfact.load` adds the method's resumer and builds the fit).

    Args:
        path: the file.
        transitions: effect name -> transition, for temporal effects fitted with a
            user-written ``transition`` (callables cannot be saved). Without them the
            posterior, ``summary()`` and ``predict()`` work, but resuming does not.
        diagnostics_types: class name -> class, to rebuild saved diagnostics (other saved
            diagnostics come back as a dict).

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is not a tensorfact fit, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No fit file at {str(path)!r}.")
    attrs = _read(path, None).attrs
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a tensorfact fit file (no format tag).")
    if int(attrs["version"]) != VERSION:
        newer = int(attrs["version"]) > VERSION
        raise ValueError(
            f"{str(path)!r} was written by {'a newer' if newer else 'an older'} tensorfact "
            f"(format version {attrs['version']}, this one reads {VERSION}); "
            + ("upgrade tensorfact to read it." if newer else
               "refit the data with this version (the file's posterior is plain netCDF, "
               "readable with xarray.open_dataset(path, group='posterior')).")
        )
    groups = {name: _read(path, name) for name in json.loads(attrs["groups"])}
    record = json.loads(attrs["record"])
    return {
        "method": str(attrs["method"]),
        "spec": spec_from_dict(json.loads(attrs["spec"]), transitions),
        "data": _data(groups["observed_data"][OBSERVED], attrs),
        "posterior": _relabelled(groups["posterior"]),
        "decorrelate": json.loads(attrs["decorrelate"]),
        "losses": np.asarray(groups["losses"]["loss"].values) if "losses" in groups else None,
        "coefficients": _arrays(groups["coefficients"]),
        "diagnostics": _diagnostics_from_dict(json.loads(attrs["diagnostics"]),
                                              diagnostics_types or {}),
        "seed": json.loads(attrs["seed"]),
        "info": json.loads(attrs["info"]),
        "_record": None if record is None else FitRecord.from_dict(record),
        "_saved": {
            "params": _arrays(groups["guide_params"]),
            "leaves": (list(_arrays(groups["svi_state"]).values())
                       if "svi_state" in groups else []),
            "stopped": str(attrs["svi_stopped"]),
        },
    }


def _data(observed: xr.DataArray, attrs: Mapping[str, Any]) -> TensorData:
    dims = tuple(str(d) for d in observed.dims)
    return TensorData(
        values=np.asarray(observed.values, np.float64),
        dims=dims,  # type: ignore[arg-type]
        coords={d: _labels(observed[d].values) for d in dims},
        name=str(attrs["data_name"]),
        attrs=json.loads(attrs["data_attrs"]),
    )


def _relabelled(posterior: xr.Dataset) -> xr.Dataset:
    return posterior.assign_coords({d: _labels(posterior[d].values) for d in posterior.dims})


def _read(path: Path, group: str | None) -> xr.Dataset:
    with xr.open_dataset(path, group=group, engine=ENGINE) as dataset:
        return dataset.load()


def _arrays(dataset: xr.Dataset) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(dataset.data_vars):  # leaf_0000, leaf_0001, ... stay in order
        variable = dataset[name]
        value = np.asarray(variable.values)
        if variable.attrs.get("tensorfact_dtype") == "bool":
            value = value.astype(bool)
        out[str(name)] = value
    return out


def _labels(values: np.ndarray) -> np.ndarray:
    """Coordinate labels as read back, with strings (stored as objects) as a str array."""
    values = np.asarray(values)
    if values.dtype == object and all(isinstance(v, str) for v in values.ravel()):
        return values.astype(str)
    return values
