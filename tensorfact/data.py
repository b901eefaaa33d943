"""DataArray -> (values, mask, labels) and back, with input validation.

Accepted input: an ``xarray.DataArray`` with three dims, or a NumPy array together with
``dims=(...)``. Values must be real numbers: integer data (e.g. counts) are converted to
float64; booleans, complex numbers, strings and objects are refused. NaN marks a missing cell
(masked out of the likelihood, never imputed); infinities are refused. The input is never
modified.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from tensorfact.spec import check_dim_names

FLOAT32_LIMIT = 1e30  # larger magnitudes overflow float32 sums of squares in the likelihood


@dataclass(frozen=True)
class TensorData:
    """Validated data: float values with NaN for missing cells, plus labels.

    Attributes:
        values: float64 array, NaN where missing.
        dims: the three dim names.
        coords: dim name -> coordinate labels (copied from the input, or integer ranges).
        name: the input's name (or ``"y"``).
        attrs: the input's attrs.
    """

    values: np.ndarray
    dims: tuple[str, str, str]
    coords: dict[str, np.ndarray]
    name: str = "y"
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return np.isfinite(self.values)

    @property
    def filled(self) -> np.ndarray:
        """Values with missing cells set to 0.0 (masked out of the likelihood)."""
        return np.where(self.mask, self.values, 0.0)

    @property
    def sizes(self) -> dict[str, int]:
        return dict(zip(self.dims, self.values.shape, strict=True))

    def to_dataarray(self, values: np.ndarray | None = None, name: str | None = None,
                     leading: Mapping[str, Sequence] | None = None) -> xr.DataArray:
        """Labels an array shaped like the data (optionally with extra leading dims)."""
        values = self.values if values is None else values
        leading = dict(leading or {})
        dims = (*leading, *self.dims)
        coords = {**{k: np.asarray(v) for k, v in leading.items()}, **self.coords}
        return xr.DataArray(values, dims=dims, coords=coords, name=name or self.name,
                            attrs=dict(self.attrs))


def as_tensor_data(data: Any, dims: Sequence[str] | None = None) -> TensorData:
    """Validates the user's data and converts it (the input is not modified).

    Args:
        data: a 3-dim ``xarray.DataArray``, or a NumPy array with ``dims``.
        dims: dim names for a NumPy array (must be omitted or equal for a DataArray).

    Returns:
        A :class:`TensorData` holding float64 copies of the values and labels.

    Raises:
        TypeError: wrong container, dtype (booleans, complex, strings, objects) or dim names.
        ValueError: wrong number of dims, empty dims, reserved dim names, infinities, values
            beyond float32 range, no observed cell, a slice with no observed cell, missing or
            duplicated labels.
    """
    array = _as_dataarray(data, dims)
    if array.ndim != 3:
        raise ValueError(
            f"tensorfact models 3-way arrays; got {array.ndim} dims {tuple(array.dims)}. "
            "Select or stack dims to get exactly three."
        )
    check_dim_names(array.dims)
    names = tuple(array.dims)
    if len(set(names)) != 3:
        raise ValueError(f"Dim names must be distinct, got {names}; rename the repeated ones.")
    empty = [d for d, n in zip(names, array.shape, strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"Dims {empty} have length 0; every dim needs at least one entry. Check the "
            "selection that produced the array (e.g. an empty .sel or .isel)."
        )
    values = _as_float(array.values, array.dtype)
    if np.isinf(values).any():
        count = int(np.isinf(values).sum())
        raise ValueError(
            f"The data contain {count} infinite value(s); replace them with NaN (missing) or "
            "finite numbers."
        )
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError(
            "The data have no finite value: every cell is NaN. Pass the observed values (NaN "
            "marks a missing cell)."
        )
    largest = float(np.max(np.abs(values[finite])))
    if largest > FLOAT32_LIMIT:
        raise ValueError(
            f"The data reach {largest:.3g}, beyond what float32 computations can handle; "
            "rescale them (e.g. divide by a power of ten or take logs)."
        )
    coords = {d: _labels(array, d) for d in names}
    for axis, dim in enumerate(names):
        other = tuple(a for a in range(3) if a != axis)
        empty_slices = np.nonzero(~finite.any(axis=other))[0]
        if empty_slices.size:
            labels = [_plain(coords[dim][k]) for k in empty_slices[:5]]
            raise ValueError(
                f"No finite value along {dim}={labels}{' ...' if empty_slices.size > 5 else ''}: "
                "such entries are not identified. Drop them (e.g. data.dropna("
                f"{dim!r}, how='all')) before fitting."
            )
    return TensorData(
        values=values,
        dims=names,  # type: ignore[arg-type]
        coords=coords,
        name=str(array.name) if array.name is not None else "y",
        attrs=copy.deepcopy(dict(array.attrs)),
    )


def _as_dataarray(data: Any, dims: Sequence[str] | None) -> xr.DataArray:
    """The input as a DataArray (a view for NumPy input: nothing is written to it)."""
    if dims is not None and (isinstance(dims, str) or not isinstance(dims, Sequence)):
        raise TypeError(
            f"dims must be a sequence of dim names such as ('region', 'product', 'year'), got "
            f"{dims!r}."
        )
    if isinstance(data, xr.DataArray):
        if dims is not None and tuple(dims) != tuple(data.dims):
            raise ValueError(
                f"dims={tuple(dims)} disagrees with the DataArray's dims {tuple(data.dims)}; "
                "drop `dims` or transpose the DataArray."
            )
        return data
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError(
            "Masked arrays are not accepted; mark missing cells with NaN instead: "
            "data.astype(float).filled(np.nan)."
        )
    if isinstance(data, np.ndarray):
        if dims is None:
            raise TypeError(
                "A NumPy array needs dim names: pass dims=('region', 'category', 'time') or "
                "wrap it in an xarray.DataArray."
            )
        dims = tuple(dims)
        if len(dims) != data.ndim:
            raise ValueError(
                f"dims names {len(dims)} dims but the array has {data.ndim}; give one name per "
                "axis."
            )
        check_dim_names(dims)
        if len(set(dims)) != len(dims):
            raise ValueError(f"Dim names must be distinct, got {dims}; rename the repeated ones.")
        return xr.DataArray(data, dims=dims)
    hint = _CONTAINER_HINTS.get(type(data).__name__, "np.asarray(data) with dims=(...)")
    raise TypeError(
        f"Expected an xarray.DataArray (or a NumPy array with dims=...), got "
        f"{type(data).__name__}; convert it with {hint}."
    )


_CONTAINER_HINTS = {
    "Dataset": "dataset[name] (pick one variable)",
    "DataFrame": "frame.stack().to_xarray() or xarray.DataArray.from_series(series)",
    "Series": "xarray.DataArray.from_series(series) (a 3-level MultiIndex)",
    "list": "np.asarray(data, dtype=float) with dims=(...)",
    "tuple": "np.asarray(data, dtype=float) with dims=(...)",
    "ArrayImpl": "np.asarray(data) with dims=(...)",
}


def check_time_coordinate(data: TensorData, time: str) -> None:
    """Requires numeric or datetime time labels to be strictly increasing.

    Raises:
        ValueError: if they are not.

    Other labels (e.g. strings) are taken in the order given.
    """
    labels = data.coords[time]
    if labels.dtype.kind in "iufmM" and labels.size > 1:
        steps = np.diff(labels)
        bad = np.nonzero(~(steps > steps.dtype.type(0)))[0]
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"The time coordinate {time!r} must be strictly increasing, but "
                f"{_plain(labels[k])!r} is followed by {_plain(labels[k + 1])!r}; sort it first "
                f"(data.sortby({time!r}))."
            )


def _as_float(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float64 copy; integers are converted (counts are measurements), booleans refused."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        raise TypeError(
            "Boolean data are not measurements; convert them explicitly (e.g. "
            "data.astype(float)) if you mean 0/1 values."
        )
    if kind == "c":
        raise TypeError(
            f"Complex data (dtype {dtype}) are not supported; pass the real part, the modulus "
            "or the two parts as separate fits."
        )
    if kind not in "iuf":
        raise TypeError(
            f"Data must be real numbers; got dtype {dtype}. Convert with data.astype(float) "
            "(and NaN for missing cells)."
        )
    return np.array(values, np.float64, copy=True)


def _plain(label: Any) -> Any:
    """A label as plain Python for messages (``'r1'`` rather than ``np.str_('r1')``)."""
    if isinstance(label, (np.datetime64, np.timedelta64)):
        return str(label)
    return label.item() if isinstance(label, np.generic) else label


def _labels(array: xr.DataArray, dim: str) -> np.ndarray:
    if dim in array.coords:
        labels = np.asarray(array.coords[dim].values).copy()
        if labels.dtype.kind in "fmM" and np.isnan(labels).any():
            raise ValueError(
                f"Coordinate {dim!r} has missing (NaN/NaT) labels; give every entry a label "
                "or drop the unlabelled entries."
            )
        unique, counts = np.unique(labels.astype(str), return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"Coordinate {dim!r} has duplicated labels "
                f"{[_plain(x) for x in unique[counts > 1][:5]]}; "
                "labels must be unique: combine the repeated entries (e.g. "
                f"data.groupby({dim!r}).mean()) or relabel them."
            )
        return labels
    return np.arange(array.sizes[dim])
