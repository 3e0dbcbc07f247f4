"""An architecture's traits record (`vramplan.traits.Traits`) for a model: the hand-written record of a native
architecture, else the one derived from the real module tree on the meta device (vramplan.measure.meta_inventory,
cached on disk with the fallback's inventory). The estimator asks here; `traits.py` holds the records themselves.
"""

from __future__ import annotations

from vramplan.traits import Traits, native_traits, with_library_tables


def traits_of(model) -> Traits:
    """The traits of a ModelSpec: hand-written for native architectures, else derived on the meta device
    (torch and transformers needed, as for the fallback's inventory)."""
    known = native_traits(model.model_type)
    if known is not None:
        return known
    from vramplan.measure.meta_inventory import traits_from_meta  # torch: only for other architectures

    return with_library_tables(model.model_type, traits_from_meta(model.config))
