"""Output shapes: the manifest's ``outputs`` vs ``input.size``/``grid``/``box_prior``, and vs the graph's own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.spec import GRAPH_BOX_PRIORS, MANIFEST_FILE, REQUIRED_OUTPUTS, Manifest

__all__ = ["check_box_prior", "check_graph", "check_outputs"]


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_outputs(manifest: Manifest, where: Path) -> None:
    s, n = manifest.input.size, manifest.num_patches
    if manifest.grid > s:
        raise BundleError(
            f"{where}: field 'grid' is {manifest.grid}, larger than input.size {s}; {REEXPORT}", "grid"
        )
    expected: dict[str, tuple[int, tuple[int | None, ...]]] = {
        "vl_map": (3, (None, manifest.map_size, manifest.map_size)),
        "global_prob": (1, (None,)),
        "best_description": (1, (None,)),
    }
    for name in REQUIRED_OUTPUTS:
        if name not in manifest.outputs:
            raise BundleError(f"{where}: field 'outputs.{name}' is missing; {REEXPORT}", f"outputs.{name}")
    for name, (rank, dims) in expected.items():
        shape = manifest.outputs[name]
        bad = len(shape) != rank or any(e is not None and d != e for d, e in zip(shape, dims, strict=True))
        if bad:
            raise BundleError(
                f"{where}: field 'outputs.{name}' is {_shape_text(shape)}, expected {_shape_text(dims)} for "
                f"input.size {s}; {REEXPORT}",
                f"outputs.{name}",
            )
    for layer in manifest.fewshot.layers:
        name = manifest.token_output(layer)
        if name not in manifest.outputs:
            raise BundleError(
                f"{where}: field 'fewshot.layers' lists layer {layer}, but 'outputs' has no '{name}'; {REEXPORT}",
                "fewshot.layers",
            )
        shape = manifest.outputs[name]
        if len(shape) != 3 or shape[1] != n or shape[2] is None:
            raise BundleError(
                f"{where}: field 'outputs.{name}' is {_shape_text(shape)}, expected [?, {n}, D] "
                f"(N = grid * grid = {manifest.grid}^2); {REEXPORT}",
                f"outputs.{name}",
            )



def check_box_prior(manifest: Manifest, where: Path) -> None:
    """A prior the runtime can honour: ``none``, or one inside the graph with its outputs declared."""
    prior = manifest.box_prior
    if prior.name == "grounding-dino":
        raise BundleError(
            f"{where}: field 'box_prior.name' is 'grounding-dino': that prior runs only on the PyTorch path "
            "(fgad-eval --box-prior grounding-dino), the runtime cannot run its detector; re-export the bundle with "
            "fgad-export --box-prior objectness (computed inside the graph) or none",
            "box_prior.name",
        )
    if prior.name not in GRAPH_BOX_PRIORS:
        raise BundleError(
            f"{where}: field 'box_prior.name' is {prior.name!r}, but this runtime knows {list(GRAPH_BOX_PRIORS)}; "
            f"upgrade fgad or {REEXPORT}",
            "box_prior.name",
        )
    if prior.name == "none":
        return
    s = manifest.map_size
    wanted: dict[str, tuple[int | None, ...]] = {"position": (None,), "region_weight": (None, s, s)}
    for name, dims in wanted.items():
        shape = manifest.outputs.get(name)
        if name not in prior.outputs or shape is None:
            raise BundleError(
                f"{where}: field 'box_prior.outputs' must list '{name}' and 'outputs' must declare it for the "
                f"{prior.name} prior; {REEXPORT}",
                "box_prior.outputs",
            )
        if len(shape) != len(dims) or any(e is not None and d != e for d, e in zip(shape, dims, strict=True)):
            raise BundleError(
                f"{where}: field 'outputs.{name}' is {_shape_text(shape)}, expected {_shape_text(dims)}; {REEXPORT}",
                f"outputs.{name}",
            )



def check_graph(
    manifest: Manifest,
    input_shapes: Mapping[str, Sequence[int | None]],
    output_shapes: Mapping[str, Sequence[int | None]],
    where: str = MANIFEST_FILE,
) -> None:
    """Compare the engine's declared input/output shapes (None for dynamic dims) with the manifest."""

    def compatible(declared: Sequence[int | None], wanted: Sequence[int | None]) -> bool:
        if len(declared) != len(wanted):
            return False
        return all(d is None or w is None or d == w for d, w in zip(declared, wanted, strict=True))

    name = manifest.input.name
    if name not in input_shapes:
        raise BundleError(
            f"{where}: field 'input.name' is '{name}', but the graph's inputs are {sorted(input_shapes)}; "
            f"{REEXPORT}",
            "input.name",
        )
    s = manifest.input.size
    if not compatible(input_shapes[name], (None, 3, s, s)):
        raise BundleError(
            f"{where}: field 'input.size' is {s}, but the graph's input '{name}' is "
            f"{_shape_text(input_shapes[name])}; {REEXPORT}",
            "input.size",
        )
    for out_name, wanted in manifest.outputs.items():
        if out_name not in output_shapes:
            field_name = "fewshot.layers" if out_name.startswith("tokens_") else f"outputs.{out_name}"
            raise BundleError(
                f"{where}: field 'outputs.{out_name}' is not an output of the graph (it has {sorted(output_shapes)}); "
                f"{REEXPORT}",
                field_name,
            )
        declared = output_shapes[out_name]
        if not compatible(declared, wanted):
            field_name = "grid" if out_name.startswith("tokens_") else "input.size"
            raise BundleError(
                f"{where}: field 'outputs.{out_name}' is {_shape_text(wanted)}, but the graph declares "
                f"{_shape_text(declared)} (check '{field_name}'); {REEXPORT}",
                f"outputs.{out_name}",
            )
